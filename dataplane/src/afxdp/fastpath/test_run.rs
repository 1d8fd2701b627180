//! `BPF_PROG_TEST_RUN` for the sched_cls fast-path program (aya 0.14 does not expose it):
//! runs the program once on a frame, as if it arrived on a given device, and returns the
//! verdict and the frame as the program left it (with the upcall tag when it upcalled).
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::afxdp::AfXdpError;
use crate::afxdp::sys::{BPF_PROG_TEST_RUN, TestRunAttr};

/// `sizeof(struct __sk_buff)` on 6.x; the kernel zero-fills a shorter context.
const SK_BUFF_CTX_LEN: usize = 192;
/// Offset of `__sk_buff.ifindex`: the device the test skb is bound to (`skb->dev`).
const SK_BUFF_IFINDEX: usize = 40;

/// `TC_ACT_SHOT`: the program dropped the frame.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`: the program redirected the frame (forward or upcall).
pub const TC_ACT_REDIRECT: u32 = 7;

/// Result of one test run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value ([`TC_ACT_REDIRECT`], [`TC_ACT_SHOT`], …).
    pub retval: u32,
    /// The frame after the program: for an upcall, tag + original frame.
    pub data: Vec<u8>,
}

/// Runs `prog` on `frame` with `skb->dev` = `ifindex` (in the calling thread's netns; the
/// kernel defaults to loopback, ifindex 1, and refuses an index that does not exist). The
/// redirect helpers only record their target during a test run: nothing is sent.
pub(super) fn run(prog: BorrowedFd<'_>, frame: &[u8], ifindex: u32) -> Result<TestRun, AfXdpError> {
    let mut ctx = [0u8; SK_BUFF_CTX_LEN];
    ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    // Room for the upcall tag and more.
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `attr` is a live, fully initialised `#[repr(C)]` prefix of `union bpf_attr` of
    // the size we pass; `data_in`/`ctx_in` point at `frame`/`ctx` (read-only for the kernel)
    // and `data_out` at `out`, whose length is `data_size_out`; all outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            (&mut attr as *mut TestRunAttr).cast::<libc::c_void>(),
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(AfXdpError::last("bpf(BPF_PROG_TEST_RUN, sched_cls)"));
    }
    out.truncate((attr.data_size_out as usize).min(out.len()));
    Ok(TestRun {
        retval: attr.retval,
        data: out,
    })
}
