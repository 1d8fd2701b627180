//! Raw kernel ABI of AF_XDP and bpf(): constants and `#[repr(C)]` structs, copied from
//! `linux/if_xdp.h` and `linux/bpf.h` (6.x) so the build needs no kernel headers, no libbpf
//! and no C toolchain. Only layouts live here; the calls that use them are in the modules
//! that own each resource.

/// Address family of XDP sockets.
pub(crate) const AF_XDP: libc::c_int = 44;
/// Socket option level of XDP sockets.
pub(crate) const SOL_XDP: libc::c_int = 283;

/// `getsockopt`: where producer/consumer/descs/flags sit in each ring's mmap.
pub(crate) const XDP_MMAP_OFFSETS: libc::c_int = 1;
/// `setsockopt`: RX ring size.
pub(crate) const XDP_RX_RING: libc::c_int = 2;
/// `setsockopt`: TX ring size.
pub(crate) const XDP_TX_RING: libc::c_int = 3;
/// `setsockopt`: register the UMEM.
pub(crate) const XDP_UMEM_REG: libc::c_int = 4;
/// `setsockopt`: fill ring size (per socket since 5.10, which shared UMEM across devices needs).
pub(crate) const XDP_UMEM_FILL_RING: libc::c_int = 5;
/// `setsockopt`: completion ring size.
pub(crate) const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
/// `getsockopt`: drop counters.
pub(crate) const XDP_STATISTICS: libc::c_int = 7;
/// `setsockopt`: descriptors the kernel turns into skbs per copy-mode TX kick (6.x; default 32).
pub(crate) const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// Bind flag: share the UMEM of the socket in `sxdp_shared_umem_fd`.
pub(crate) const XDP_SHARED_UMEM: u16 = 1 << 0;
/// Bind flag: force copy mode (veth refuses zero-copy).
pub(crate) const XDP_COPY: u16 = 1 << 1;
/// Bind flag: the kernel may sleep and set `XDP_RING_NEED_WAKEUP`; we then kick it.
pub(crate) const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
/// Ring flag: the kernel wants a syscall before it makes progress on this ring.
pub(crate) const XDP_RING_NEED_WAKEUP: u32 = 1 << 0;

/// mmap page offset of the RX ring.
pub(crate) const XDP_PGOFF_RX_RING: libc::off_t = 0;
/// mmap page offset of the TX ring.
pub(crate) const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
/// mmap page offset of the fill ring.
pub(crate) const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
/// mmap page offset of the completion ring.
pub(crate) const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;

/// `struct sockaddr_xdp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SockaddrXdp {
    pub family: u16,
    pub flags: u16,
    pub ifindex: u32,
    pub queue_id: u32,
    pub shared_umem_fd: u32,
}

/// `struct xdp_umem_reg` (with the 6.x `tx_metadata_len`, zero: no TX metadata).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct XdpUmemReg {
    pub addr: u64,
    pub len: u64,
    pub chunk_size: u32,
    pub headroom: u32,
    pub flags: u32,
    pub tx_metadata_len: u32,
}

/// `struct xdp_ring_offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct XdpRingOffset {
    pub producer: u64,
    pub consumer: u64,
    pub desc: u64,
    pub flags: u64,
}

/// `struct xdp_mmap_offsets`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct XdpMmapOffsets {
    pub rx: XdpRingOffset,
    pub tx: XdpRingOffset,
    pub fr: XdpRingOffset,
    pub cr: XdpRingOffset,
}

/// `struct xdp_desc`: one RX/TX ring entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

/// `struct xdp_statistics`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct XdpStatisticsRaw {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

// bpf(2) commands.
pub(crate) const BPF_MAP_CREATE: libc::c_int = 0;
pub(crate) const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
pub(crate) const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
pub(crate) const BPF_PROG_LOAD: libc::c_int = 5;
pub(crate) const BPF_PROG_TEST_RUN: libc::c_int = 10;
pub(crate) const BPF_LINK_CREATE: libc::c_int = 28;

/// `BPF_MAP_TYPE_XSKMAP`: queue index → XDP socket.
pub(crate) const BPF_MAP_TYPE_XSKMAP: u32 = 17;
/// `BPF_PROG_TYPE_XDP`.
pub(crate) const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP` attach type (bpf_link on a netdev).
pub(crate) const BPF_XDP: u32 = 37;
/// Helper id of `bpf_redirect_map`.
pub(crate) const BPF_FUNC_REDIRECT_MAP: i32 = 51;
/// `ld_imm64` source register meaning "imm is a map fd".
pub(crate) const BPF_PSEUDO_MAP_FD: u8 = 1;
/// Attach in the driver (native XDP).
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// Attach in the generic (skb) path.
pub(crate) const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;

/// XDP verdicts (`enum xdp_action`).
pub(crate) const XDP_ABORTED: u32 = 0;
pub(crate) const XDP_DROP: u32 = 1;
pub(crate) const XDP_PASS: u32 = 2;
pub(crate) const XDP_TX: u32 = 3;
pub(crate) const XDP_REDIRECT: u32 = 4;

/// `struct bpf_insn`: `regs` packs dst (low nibble) and src (high nibble).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// `bpf_attr` for `BPF_MAP_CREATE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MapCreateAttr {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub inner_map_fd: u32,
    pub numa_node: u32,
    pub map_name: [u8; 16],
}

/// `bpf_attr` for `BPF_MAP_*_ELEM`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MapElemAttr {
    pub map_fd: u32,
    pub _pad: u32,
    pub key: u64,
    pub value: u64,
    pub flags: u64,
}

/// `bpf_attr` for `BPF_PROG_LOAD`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProgLoadAttr {
    pub prog_type: u32,
    pub insn_cnt: u32,
    pub insns: u64,
    pub license: u64,
    pub log_level: u32,
    pub log_size: u32,
    pub log_buf: u64,
    pub kern_version: u32,
    pub prog_flags: u32,
    pub prog_name: [u8; 16],
    pub prog_ifindex: u32,
    pub expected_attach_type: u32,
}

/// `bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TestRunAttr {
    pub prog_fd: u32,
    pub retval: u32,
    pub data_size_in: u32,
    pub data_size_out: u32,
    pub data_in: u64,
    pub data_out: u64,
    pub repeat: u32,
    pub duration: u32,
    pub ctx_size_in: u32,
    pub ctx_size_out: u32,
    pub ctx_in: u64,
    pub ctx_out: u64,
}

/// `bpf_attr` for `BPF_LINK_CREATE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LinkCreateAttr {
    pub prog_fd: u32,
    pub target_ifindex: u32,
    pub attach_type: u32,
    pub flags: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn afxdp_layouts_match_the_kernel_headers() {
        assert_eq!(size_of::<SockaddrXdp>(), 16);
        assert_eq!(size_of::<XdpUmemReg>(), 32);
        assert_eq!(size_of::<XdpMmapOffsets>(), 128);
        assert_eq!(size_of::<XdpDesc>(), 16);
        assert_eq!(size_of::<XdpStatisticsRaw>(), 48);
        assert_eq!(size_of::<BpfInsn>(), 8);
        // Offsets measured with gcc against linux/bpf.h on the build machine.
        assert_eq!(offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(offset_of!(ProgLoadAttr, prog_ifindex), 64);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(offset_of!(TestRunAttr, data_in), 16);
        assert_eq!(offset_of!(TestRunAttr, repeat), 32);
        assert_eq!(offset_of!(TestRunAttr, ctx_in), 48);
        assert_eq!(offset_of!(LinkCreateAttr, attach_type), 8);
    }
}
