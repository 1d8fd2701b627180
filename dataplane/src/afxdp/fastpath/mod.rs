//! The in-kernel fast path of the tiered datapath (issue 9): a tc/TCX ingress classifier,
//! `dataplane/bpf/fastpath.bpf.c`, on every container's host-side veth and on the gateway
//! veth. Frames of flows the engine admitted (entries in the kernel flow table) are forwarded
//! by the kernel — `bpf_redirect_peer` into a container, `bpf_redirect` to the gateway — so
//! GSO skbs stay whole; everything else is upcalled to the AF_XDP loop with a 14-byte tag
//! ([`UpcallTag`]) saying where it came from and why.
//!
//! Why aya: it loads the clang-built ELF (BTF `.maps`), creates the maps and makes TCX links
//! (kernel ≥ 6.6) whose descriptors we own, so a killed process leaves nothing attached.
//! aya 0.14 has no `BPF_PROG_TEST_RUN` for classifiers: [`FastPath::test_run`] issues it
//! directly (`test_run` module).
//!
//! The split follows the threads: [`FastPath`] (program, `bw_ports`, links) stays with the
//! controller; [`KernelFlows`] (flow table, generation, counters), taken once with
//! [`FastPath::take_flows`], goes to the dataplane worker. [`abi`] mirrors the C layouts.
//!
//! The object is committed (`dataplane/bpf/fastpath.bpf.o`); `dataplane/bpf/build.sh`
//! regenerates it and `dataplane/bpf/check.sh` (run by CI) fails when it is stale.
pub mod abi;
mod batch;
mod error;
mod flows;
mod program;
mod test_run;

pub use abi::{
    ConfigEntry, FlowKey, FlowValue, OutMode, PortEntry, TAG_DST_MAC, TAG_ETHERTYPE,
    TAG_ETHERTYPE_OFFSET, TAG_LEN, TAG_PORT_OFFSET, TAG_REASON_OFFSET, UpcallReason, UpcallTag,
};
pub use error::FastPathError;
pub use flows::{FastPathStats, KernelFlows};
pub use program::{FastPath, FastPathConfig, PROGRAM_NAME, tcx_ingress_programs};
pub use test_run::{TC_ACT_REDIRECT, TC_ACT_SHOT, TestRun};
