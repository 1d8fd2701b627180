//! AF_XDP ports: the dataplane on real interfaces, written directly over `libc`.
//!
//! Why not the `afxdp` crate (afxdp-rs): unmaintained since 2022, it pins a 2021 libbpf that
//! needs `libelf-dev` at build time, attaches its XDP program by netlink (so a crashed
//! process leaves it attached, blocking the next native attach) and panics on unexpected
//! errors in its TX wake-up path. This layer is small, owns all the product's `unsafe`
//! (each block carries a `// SAFETY:` note) and turns every failure into an [`AfXdpError`]
//! that names the syscall, the errno and what to do.
//!
//! Pieces, one job each:
//! - [`umem`]: the mmap'd frame region, shared by every port's socket ([`Umem`] handles,
//!   one per worker thread; see its docs for the frame ownership discipline).
//! - `ring`: the four producer/consumer rings with Acquire/Release ordering.
//! - [`socket`]: the XSK — UMEM registration or `XDP_SHARED_UMEM`, ring setup, bind in copy
//!   mode with need_wakeup, EBUSY retry, statistics, kicks.
//! - [`bpf`]: XSKMAP, the six-instruction redirect program (built here, no clang/libbpf),
//!   bpf_link attach (gone with the process), `BPF_PROG_TEST_RUN`.
//! - [`port`]: [`XdpPort`], the [`crate::phy::Port`] implementation.
//! - [`poll`]: busy-poll under load, `poll()` when idle.
//! - [`iface`], [`thread`]: interface index/MTU; entering a netns, pinning a thread.
//!
//! # Several workers over one UMEM
//! Create one [`Umem`]; open the first port with `share_with: None` and the others with
//! `share_with: Some(&first)`. Give each worker thread a `Umem` clone, the ports it owns
//! (`XdpPort` is `Send`) and a [`crate::phy::FreeList`] holding its share of the frames. A
//! frame bound for another worker's port travels as a [`crate::phy::FrameDesc`] over a
//! lock-free queue; the receiving worker transmits it, and the completion returns the frame
//! to *its* free list — free frames are rebalanced between workers the same way (descriptors,
//! not bytes). Each socket has its own fill and completion rings, so no ring is shared
//! between threads.
pub mod bpf;
pub mod error;
pub mod fastpath;
pub mod iface;
pub mod kernel_offload;
pub mod poll;
pub mod port;
mod ring;
pub mod socket;
pub(crate) mod sys;
pub mod thread;
pub mod umem;

pub use bpf::{RedirectProgram, XdpAction, XdpLink, XdpMode, XskMap};
pub use error::{AfXdpError, VETH_NATIVE_XDP_MAX_MTU};
pub use iface::{if_index, interface_mtu};
pub use poll::{AdaptivePoller, PollConfig, PollOutcome};
pub use port::{UmemShare, XdpPort, XdpPortConfig, XdpPortCounters};
pub use socket::{BindRetry, RingSizes, XdpStatistics, XskSocket};
pub use thread::{NetnsReturn, enter_netns, pin_current_thread};
pub use umem::{Umem, UmemConfig, UmemRegion};
