//! The XDP side: an XSKMAP, the six-instruction program that redirects every frame of a
//! queue into the socket in that map slot, and its attachment through a bpf_link — which
//! the kernel removes when the last descriptor closes, so a crashed (SIGKILLed) process
//! leaves no program behind. All through the raw `bpf()` syscall: no libbpf, no clang.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::error::{AfXdpError, errno_name};
use super::sys::*;

/// How the program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (veth supports it): the fast path, the default.
    #[default]
    Native,
    /// The generic skb path: slower, and on veth the peer keeps TSO so frames over the
    /// UMEM's data room are dropped. Only when asked for explicitly.
    Skb,
}

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Skb => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// What an XDP program decided (`enum xdp_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    /// The program failed.
    Aborted,
    /// Dropped.
    Drop,
    /// Handed to the kernel stack.
    Pass,
    /// Sent back out of the same interface.
    Tx,
    /// Redirected (here: into an AF_XDP socket).
    Redirect,
    /// A value outside the enum.
    Other(u32),
}

impl From<u32> for XdpAction {
    fn from(v: u32) -> Self {
        match v {
            XDP_ABORTED => Self::Aborted,
            XDP_DROP => Self::Drop,
            XDP_PASS => Self::Pass,
            XDP_TX => Self::Tx,
            XDP_REDIRECT => Self::Redirect,
            other => Self::Other(other),
        }
    }
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T, call: &'static str) -> Result<libc::c_long, AfXdpError> {
    // SAFETY: `attr` is a live, fully initialised `#[repr(C)]` prefix of `union bpf_attr` of the
    // size we pass; pointers inside it (set by our callers) refer to buffers alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(AfXdpError::last(call))
    } else {
        Ok(r)
    }
}

fn fd_from(r: libc::c_long) -> OwnedFd {
    // SAFETY: `r` is a new descriptor just returned by bpf(); nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(
        name.bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .take(15),
    ) {
        *o = b;
    }
    out
}

/// An XSKMAP: queue index → AF_XDP socket.
pub struct XskMap {
    fd: OwnedFd,
    max_entries: u32,
}

impl XskMap {
    /// Creates a map with one slot per receive queue.
    pub fn new(max_entries: u32) -> Result<Self, AfXdpError> {
        let mut attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_XSKMAP,
            key_size: 4,
            value_size: 4,
            max_entries,
            map_name: name16("bw_xsks"),
            ..Default::default()
        };
        let r = bpf(BPF_MAP_CREATE, &mut attr, "bpf(BPF_MAP_CREATE, XSKMAP)")?;
        Ok(Self {
            fd: fd_from(r),
            max_entries,
        })
    }

    /// Puts the (bound) socket `xsk` in slot `queue`.
    pub fn insert(&self, queue: u32, xsk: BorrowedFd<'_>) -> Result<(), AfXdpError> {
        if queue >= self.max_entries {
            return Err(AfXdpError::Config(format!(
                "queue {queue} beyond the XSKMAP's {} slots",
                self.max_entries
            )));
        }
        let key = queue;
        let value = xsk.as_raw_fd() as u32;
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..Default::default()
        };
        bpf(
            BPF_MAP_UPDATE_ELEM,
            &mut attr,
            "bpf(BPF_MAP_UPDATE_ELEM, XSKMAP)",
        )?;
        Ok(())
    }

    /// Empties slot `queue` (frames of that queue then go to the kernel stack).
    pub fn remove(&self, queue: u32) -> Result<(), AfXdpError> {
        let key = queue;
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            ..Default::default()
        };
        bpf(
            BPF_MAP_DELETE_ELEM,
            &mut attr,
            "bpf(BPF_MAP_DELETE_ELEM, XSKMAP)",
        )?;
        Ok(())
    }

    /// The map's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Instructions of the redirect program for the map with descriptor `map_fd`:
/// `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS)` — redirect to the socket
/// of this queue, or pass the frame to the kernel when the slot is empty.
pub fn redirect_program(map_fd: i32) -> [BpfInsn; 6] {
    const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
        BpfInsn {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        }
    }
    const BPF_LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const BPF_LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
    const BPF_MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const BPF_CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const BPF_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    const XDP_MD_RX_QUEUE_INDEX: i16 = 16;
    [
        insn(BPF_LDX_MEM_W, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0), // r2 = ctx->rx_queue_index
        insn(BPF_LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, map_fd), // r1 = &xsks (two slots)
        insn(0, 0, 0, 0, 0),
        insn(BPF_MOV64_IMM, 3, 0, 0, XDP_PASS as i32), // r3 = fallback action
        insn(BPF_CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        insn(BPF_EXIT, 0, 0, 0, 0),
    ]
}

/// A loaded redirect program (bound to its XSKMAP).
pub struct RedirectProgram {
    fd: OwnedFd,
}

impl RedirectProgram {
    /// Loads the redirect program for `map` through the verifier.
    pub fn load(map: &XskMap) -> Result<Self, AfXdpError> {
        let insns = redirect_program(map.fd.as_raw_fd());
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name16("bw_xsk_redirect"),
            expected_attach_type: BPF_XDP,
            ..Default::default()
        };
        match bpf(BPF_PROG_LOAD, &mut attr, "bpf(BPF_PROG_LOAD)") {
            Ok(r) => Ok(Self { fd: fd_from(r) }),
            Err(AfXdpError::Sys { errno, .. })
                if errno == libc::EINVAL || errno == libc::EACCES =>
            {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                Err(AfXdpError::Verifier {
                    errno_name: errno_name(errno),
                    log: String::from_utf8_lossy(&log[..end]).trim().to_owned(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN` (receive queue 0 of the
    /// calling thread's loopback device) and returns its verdict. Live redirects are not
    /// performed: the verdict is what the program returned.
    pub fn test_run(&self, frame: &[u8]) -> Result<XdpAction, AfXdpError> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..Default::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr, "bpf(BPF_PROG_TEST_RUN)")?;
        Ok(XdpAction::from(attr.retval))
    }

    /// The program's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The program attached to an interface through a bpf_link. Dropping it (or the process
/// dying) detaches the program.
pub struct XdpLink {
    _fd: OwnedFd,
    ifindex: u32,
}

impl XdpLink {
    /// Attaches `prog` to `ifindex` in `mode`.
    pub fn attach(
        prog: &RedirectProgram,
        ifname: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> Result<Self, AfXdpError> {
        let mut attr = LinkCreateAttr {
            prog_fd: prog.fd.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: mode.flags(),
        };
        match bpf(BPF_LINK_CREATE, &mut attr, "bpf(BPF_LINK_CREATE, XDP)") {
            Ok(r) => Ok(Self {
                _fd: fd_from(r),
                ifindex,
            }),
            Err(e) => Err(match e.errno() {
                Some(libc::ERANGE) if mode == XdpMode::Native => AfXdpError::PeerMtuTooLarge {
                    ifname: ifname.to_owned(),
                },
                Some(errno @ (libc::EEXIST | libc::EBUSY)) => AfXdpError::AlreadyAttached {
                    ifname: ifname.to_owned(),
                    errno_name: errno_name(errno),
                },
                _ => e,
            }),
        }
    }

    /// Interface the program is attached to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn afxdp_redirect_program_encodes_six_instructions() {
        let p = redirect_program(7);
        assert_eq!(p.len(), 6);
        assert_eq!(
            p[0],
            BpfInsn {
                code: 0x61,
                regs: 0x12,
                off: 16,
                imm: 0
            }
        );
        assert_eq!(
            p[1],
            BpfInsn {
                code: 0x18,
                regs: 0x11,
                off: 0,
                imm: 7
            }
        );
        assert_eq!(p[3].imm, XDP_PASS as i32);
        assert_eq!(p[4].imm, 51);
        assert_eq!(p[5].code, 0x95);
    }
}
