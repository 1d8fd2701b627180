//! An AF_XDP port: one interface queue, its socket, XSKMAP, redirect program and link,
//! behind the [`Port`] trait. A port opened with `receive: false` is the socket alone, bound
//! TX-only: no XDP program on the device, so its veth peer keeps TSO/GSO.
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::bpf::{RedirectProgram, XdpLink, XdpMode, XskMap};
use super::error::{AfXdpError, VETH_NATIVE_XDP_MAX_MTU};
use super::iface::{if_index, interface_mtu};
use super::socket::{BindRetry, BindTarget, RingSizes, UmemBinding, XdpStatistics, XskSocket};
use super::sys::XdpDesc;
use super::umem::Umem;
use crate::phy::{
    DescBatch, FrameDesc, FrameMemory, FreeList, Port, PortFrames, SEGMENT_SHIFT, SegmentId,
    segment_base,
};

/// Frames a port keeps on its receive side by default: enough for a burst of a few batches
/// between two visits of a busy worker, small enough that a thousand idle ports park
/// 64 × 2 KiB = 128 KiB each rather than a whole ring's worth.
pub const DEFAULT_FILL_SHARE: u32 = 64;

/// How to open a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpPortConfig {
    /// Receive queue to bind (veths have one: 0).
    pub queue: u32,
    /// Native (default) or generic XDP.
    pub mode: XdpMode,
    /// Ring sizes.
    pub rings: RingSizes,
    /// Copy-mode TX descriptors per kick (`XDP_MAX_TX_SKB_BUDGET`); `None` keeps the kernel's 32.
    pub tx_budget: Option<u32>,
    /// At most this many TX kicks per `transmit`/`complete` call, so a stuck device cannot
    /// hold the worker.
    pub max_kicks: u32,
    /// EBUSY retry on bind.
    pub bind_retry: BindRetry,
    /// Frames the port keeps posted on its receive side (fill ring, kernel, RX ring): its
    /// share of the UMEM. `fill` tops up to this, never to the ring's size, so frames are
    /// budgeted per port instead of parked in proportion to ring sizes.
    pub fill_share: u32,
    /// True (default): the port receives — XSKMAP, redirect program and bpf_link on the
    /// device, `fill_share` frames posted. False: the port only transmits — the socket is
    /// bound without an RX ring (fill ring of one entry, left empty), no map, no program,
    /// no link. Why: native XDP on a veth clears its peer's TSO/GSO and caps the peer's MTU;
    /// a TX-only socket leaves the device (and the container behind it) as it was, while
    /// frames decided in userspace are still re-injected through it (`__dev_direct_xmit`).
    pub receive: bool,
}

impl Default for XdpPortConfig {
    fn default() -> Self {
        Self {
            queue: 0,
            mode: XdpMode::Native,
            rings: RingSizes::default(),
            tx_budget: Some(256),
            max_kicks: 16,
            bind_retry: BindRetry::default(),
            fill_share: DEFAULT_FILL_SHARE,
            receive: true,
        }
    }
}

/// Counters of a port's userspace side (the kernel's are in [`XdpPort::statistics`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpPortCounters {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames queued for transmit.
    pub tx_frames: u64,
    /// Frames completed (returned to the free list) after transmit.
    pub tx_completed: u64,
    /// TX descriptors refused before reaching the kernel (out of the UMEM or empty): their
    /// frames go straight back to the free list.
    pub tx_rejected: u64,
    /// `sendto` kicks.
    pub tx_kicks: u64,
    /// Kicks the kernel refused for now (EAGAIN/EBUSY/ENOBUFS/ENETDOWN) or that made no progress.
    pub tx_kick_stalls: u64,
    /// Kicks that failed with another error (the frames stay queued; see `last_errno`).
    pub tx_kick_errors: u64,
    /// RX wake-ups issued because the kernel set need_wakeup on the fill ring.
    pub rx_wakeups: u64,
    /// errno of the last failed kick, 0 if none.
    pub last_errno: i32,
    /// `fill` calls that found no free frame of the port's segment while the port held less
    /// than its share: the port was short of frames to receive into (starvation).
    pub fill_starved: u64,
}

/// A duplicate descriptor of the socket that registered a UMEM: what a port opened later
/// (a container that started after the dataplane) shares the UMEM through, while the
/// registering port itself is owned by a worker thread.
#[derive(Debug)]
pub struct UmemShare {
    fd: OwnedFd,
    segment: SegmentId,
}

impl UmemShare {
    /// The UMEM segment ports opened through this handle use.
    pub fn segment(&self) -> SegmentId {
        self.segment
    }
}

/// An AF_XDP port on one interface queue.
pub struct XdpPort {
    // Drop order: detach the program, then the program and map, then the socket (whose rings
    // are unmapped before its fd closes), so no frame is redirected to a closing socket.
    // All three are `None` on a TX-only port.
    _link: Option<XdpLink>,
    _prog: Option<RedirectProgram>,
    _map: Option<XskMap>,
    socket: XskSocket,
    ifname: String,
    frame_mask: u64,
    frame_shift: u32,
    max_kicks: u32,
    segment: SegmentId,
    base: u64,
    fill_share: u32,
    /// One bit per frame of the segment: set while the frame is on this port's rings (fill,
    /// kernel, RX, TX, completion), so closing the port returns exactly those frames.
    held: Box<[u64]>,
    /// Frames refused in `transmit`, returned by the next `complete`.
    rejected: Vec<u64>,
    fill_posted: u64,
    rx_taken: u64,
    tx_posted: u64,
    comp_taken: u64,
    counters: XdpPortCounters,
}

impl XdpPort {
    /// Opens a port on `ifname` in the calling thread's network namespace: socket bound in
    /// copy mode with need_wakeup, redirect program attached through a bpf_link (with
    /// `config.receive`; without it the socket alone, bound TX-only).
    ///
    /// Any port may register a UMEM or segment, a TX-only one included: ports opened later
    /// share through it as through any other.
    ///
    /// The first port of a UMEM registers it (`share_with: None`); every other port shares it
    /// through an already open port (`share_with: Some(first)`), so frames move between ports
    /// as descriptors. The registering port must outlive the ports sharing through it.
    pub fn open(
        umem: &Umem,
        ifname: &str,
        config: &XdpPortConfig,
        share_with: Option<&XdpPort>,
    ) -> Result<Self, AfXdpError> {
        let seg = share_with.map_or(0, |p| p.segment);
        let how = share_with.map_or(UmemBinding::Register, |p| UmemBinding::Share(p.socket.fd()));
        Self::open_inner(umem, seg, ifname, config, how)
    }

    /// Opens the first port of UMEM segment `seg` (from [`Umem::add_segment`]): its socket
    /// registers the segment, and later ports of the segment share it through
    /// [`XdpPort::umem_share`].
    pub fn open_in_segment(
        umem: &Umem,
        seg: SegmentId,
        ifname: &str,
        config: &XdpPortConfig,
    ) -> Result<Self, AfXdpError> {
        Self::open_inner(umem, seg, ifname, config, UmemBinding::Register)
    }

    /// Opens a port of segment `seg` that registers the segment again: for when the socket
    /// that registered it lost its device (the kernel then refuses to share through it,
    /// EBADF), e.g. after that container was removed.
    pub fn open_reregistering(
        umem: &Umem,
        seg: SegmentId,
        ifname: &str,
        config: &XdpPortConfig,
    ) -> Result<Self, AfXdpError> {
        Self::open_inner(umem, seg, ifname, config, UmemBinding::Reregister)
    }

    /// A handle on this port's socket that lets more ports share its UMEM later
    /// ([`XdpPort::open_shared`]), after this port has moved to a worker thread. Call it on
    /// the port that registered the UMEM; the handle keeps that socket open, so drop it
    /// before (or with) the port.
    pub fn umem_share(&self) -> Result<UmemShare, AfXdpError> {
        let fd = self
            .socket
            .fd()
            .try_clone_to_owned()
            .map_err(|e| AfXdpError::from_errno("dup(xsk)", e.raw_os_error().unwrap_or(0)))?;
        Ok(UmemShare {
            fd,
            segment: self.segment,
        })
    }

    /// Opens a port sharing the UMEM registered by the socket behind `share` (see
    /// [`XdpPort::umem_share`]); otherwise as [`XdpPort::open`].
    pub fn open_shared(
        umem: &Umem,
        ifname: &str,
        config: &XdpPortConfig,
        share: &UmemShare,
    ) -> Result<Self, AfXdpError> {
        Self::open_inner(
            umem,
            share.segment,
            ifname,
            config,
            UmemBinding::Share(share.fd.as_fd()),
        )
    }

    fn open_inner(
        umem: &Umem,
        seg: SegmentId,
        ifname: &str,
        config: &XdpPortConfig,
        how: UmemBinding<'_>,
    ) -> Result<Self, AfXdpError> {
        let ifindex = if_index(ifname)?;
        // The MTU limits are those of native XDP on a veth: a TX-only port attaches nothing.
        if config.receive && config.mode == XdpMode::Native {
            let mtu = interface_mtu(ifname)?;
            if mtu > VETH_NATIVE_XDP_MAX_MTU {
                return Err(AfXdpError::MtuTooLarge {
                    ifname: ifname.to_owned(),
                    mtu,
                });
            }
            let room = umem.frame_size().saturating_sub(256 + 14) as u32;
            if mtu > room {
                tracing::warn!(
                    ifname,
                    mtu,
                    room,
                    "MTU exceeds the UMEM frame's data room: larger frames will be dropped"
                );
            }
        }
        let target = BindTarget {
            segment: seg,
            ifname,
            ifindex,
            queue: config.queue,
        };
        let rings = if config.receive {
            config.rings
        } else {
            config.rings.tx_only()
        };
        let socket = XskSocket::bind_sharing(umem, target, rings, how, config.bind_retry)?;
        if let Some(budget) = config.tx_budget
            && !socket.set_tx_budget(budget)?
        {
            tracing::info!(
                ifname,
                "kernel has no XDP_MAX_TX_SKB_BUDGET: 32 TX descriptors per kick"
            );
        }
        let (map, prog, link) = if config.receive {
            let map = XskMap::new(config.queue + 1)?;
            map.insert(config.queue, socket.fd())?;
            let prog = RedirectProgram::load(&map)?;
            let link = XdpLink::attach(&prog, ifname, ifindex, config.mode)?;
            (Some(map), Some(prog), Some(link))
        } else {
            (None, None, None)
        };
        tracing::debug!(ifname, ifindex, queue = config.queue, mode = ?config.mode, receive = config.receive, "AF_XDP port open");
        Ok(Self {
            _link: link,
            _prog: prog,
            _map: map,
            rejected: Vec::with_capacity(config.rings.tx as usize),
            socket,
            ifname: ifname.to_owned(),
            frame_mask: !(umem.frame_size() as u64 - 1),
            frame_shift: umem.frame_size().trailing_zeros(),
            max_kicks: config.max_kicks.max(1),
            segment: seg,
            base: segment_base(seg),
            // A TX-only port posts nothing: `fill` has no work and `fill_short` stays false.
            fill_share: if config.receive {
                config.fill_share.max(1)
            } else {
                0
            },
            held: vec![0; umem.segment_frames(seg).div_ceil(64)].into_boxed_slice(),
            fill_posted: 0,
            rx_taken: 0,
            tx_posted: 0,
            comp_taken: 0,
            counters: XdpPortCounters::default(),
        })
    }

    /// Interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// False for a port opened TX-only (`XdpPortConfig::receive == false`): nothing is
    /// attached to its device and it never receives.
    pub fn receives(&self) -> bool {
        self._link.is_some()
    }

    /// The socket's descriptor, for [`super::AdaptivePoller`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.fd()
    }

    /// Userspace counters.
    pub fn counters(&self) -> XdpPortCounters {
        self.counters
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(&self) -> Result<XdpStatistics, AfXdpError> {
        self.socket.statistics()
    }

    /// True when frames wait in the TX ring or the completion ring: the worker must not
    /// sleep long before calling `complete` again.
    pub fn has_pending_tx(&self) -> bool {
        self.tx_posted != self.comp_taken
    }

    /// Kicks the kernel until the TX ring is empty, it stops making progress, or
    /// `max_kicks` is reached. Copy mode sends at most the TX budget per kick.
    fn drain_tx(&mut self) {
        let mut before = self.socket.rings.tx.outstanding();
        let mut kicks = 0;
        while before > 0 && kicks < self.max_kicks {
            kicks += 1;
            self.counters.tx_kicks += 1;
            match self.socket.kick_tx() {
                Ok(true) => {}
                Ok(false) => {
                    self.counters.tx_kick_stalls += 1;
                    break;
                }
                Err(e) => {
                    self.counters.tx_kick_errors += 1;
                    self.counters.last_errno = e.errno().unwrap_or(0);
                    break;
                }
            }
            let after = self.socket.rings.tx.outstanding();
            if after >= before {
                // Completion ring full or device busy: come back after `complete`.
                self.counters.tx_kick_stalls += 1;
                break;
            }
            before = after;
        }
    }
}

impl XdpPort {
    /// The frame's index in the segment's `held` bitmap.
    #[inline(always)]
    fn bit(&self, addr: u64) -> (usize, u64) {
        frame_bit(self.frame_shift, addr)
    }

    #[inline(always)]
    fn mark_held(&mut self, addr: u64) {
        let (w, b) = self.bit(addr);
        if let Some(word) = self.held.get_mut(w) {
            *word |= b;
        }
    }

    #[inline(always)]
    fn mark_returned(&mut self, addr: u64) {
        let (w, b) = self.bit(addr);
        if let Some(word) = self.held.get_mut(w) {
            *word &= !b;
        }
    }

    /// Frames on the receive side (fill ring, kernel, RX ring).
    fn rx_side(&self) -> u32 {
        (self.fill_posted - self.rx_taken) as u32
    }

    /// True when the receive side holds less than the port's share: the next `fill` has
    /// work to do (a worker revisits such ports even when they are idle).
    pub fn fill_short(&self) -> bool {
        self.rx_side() < self.fill_share
    }

    /// The UMEM segment this port's socket is bound to.
    pub fn umem_segment(&self) -> SegmentId {
        self.segment
    }

    /// Closes the port — the XDP link first, then the program, map and socket — and returns
    /// every frame it still held, which nothing (kernel included) touches any more: what a
    /// removed container gives back to the pool.
    pub fn close(self) -> Vec<u64> {
        let XdpPort {
            _link,
            _prog,
            _map,
            socket,
            held,
            rejected,
            base,
            frame_shift,
            ..
        } = self;
        drop(_link);
        drop(_prog);
        drop(_map);
        drop(socket);
        let mut frames = rejected;
        for (w, &word) in held.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                frames.push(base + ((w as u64 * 64 + b) << frame_shift));
            }
        }
        frames
    }
}

/// Word and bit of frame `addr` in a segment's `held` bitmap, for frames of
/// `1 << frame_shift` bytes.
#[inline(always)]
fn frame_bit(frame_shift: u32, addr: u64) -> (usize, u64) {
    let i = ((addr & ((1 << SEGMENT_SHIFT) - 1)) >> frame_shift) as usize;
    (i / 64, 1 << (i % 64))
}

impl Port<Umem> for XdpPort {
    fn fill(&mut self, _mem: &mut Umem, free: &mut FreeList) {
        if self.fill_share == 0 {
            // TX-only: no RX ring, nothing to post or wake.
            return;
        }
        let want = self.fill_share.saturating_sub(self.rx_side());
        if want > 0 {
            let n = self.socket.rings.fill.free(want).min(want);
            let mut written = 0;
            while written < n {
                let Some(addr) = free.pop_in(self.segment) else {
                    self.counters.fill_starved += 1;
                    break;
                };
                let addr = addr & self.frame_mask;
                self.mark_held(addr);
                self.socket.rings.fill.write(written, addr - self.base);
                written += 1;
            }
            if written > 0 {
                self.socket.rings.fill.submit(written);
                self.fill_posted += u64::from(written);
            }
        }
        if self.socket.rings.fill.needs_wakeup() {
            self.counters.rx_wakeups += 1;
            if let Err(e) = self.socket.kick_rx() {
                self.counters.last_errno = e.errno().unwrap_or(0);
            }
        }
    }

    fn receive(&mut self, _mem: &mut Umem, out: &mut DescBatch) {
        // Split borrows: the RX ring (in the socket) and the `held` bitmap.
        let Self {
            socket,
            held,
            base,
            frame_shift,
            ..
        } = self;
        let Some(rx) = socket.rings.rx.as_mut() else {
            return;
        };
        let n = rx.available(out.spare() as u32);
        for i in 0..n {
            let d = rx.read(i);
            let addr = *base | d.addr;
            let (w, b) = frame_bit(*frame_shift, addr);
            if let Some(word) = held.get_mut(w) {
                *word &= !b;
            }
            // Cannot fail: n <= spare.
            let _ = out.push(FrameDesc { addr, len: d.len });
        }
        rx.release(n);
        self.rx_taken += u64::from(n);
        self.counters.rx_frames += u64::from(n);
    }

    fn transmit(&mut self, mem: &mut Umem, batch: &mut DescBatch) {
        let want = batch.len() as u32;
        let room = self.socket.rings.tx.free(want).min(want);
        let mut written = 0;
        for i in 0..room as usize {
            let d = batch.as_slice()[i];
            if d.len == 0 || !mem.desc_in_bounds(self.segment, d.addr, d.len) {
                // The kernel would skip it without completing it, losing the frame.
                self.rejected.push(d.addr & self.frame_mask);
                self.counters.tx_rejected += 1;
                continue;
            }
            self.mark_held(d.addr & self.frame_mask);
            self.socket.rings.tx.write(
                written,
                XdpDesc {
                    addr: d.addr - self.base,
                    len: d.len,
                    options: 0,
                },
            );
            written += 1;
        }
        if written > 0 {
            self.socket.rings.tx.submit(written);
            self.tx_posted += u64::from(written);
            self.counters.tx_frames += u64::from(written);
        }
        batch.consume_front(room as usize);
        self.drain_tx();
    }

    fn complete(&mut self, free: &mut FreeList) {
        while let Some(addr) = self.rejected.pop() {
            free.push(addr);
        }
        let n = self.socket.rings.completion.available(u32::MAX);
        for i in 0..n {
            let addr = self.base | (self.socket.rings.completion.read(i) & self.frame_mask);
            self.mark_returned(addr);
            free.push(addr);
        }
        self.socket.rings.completion.release(n);
        self.comp_taken += u64::from(n);
        self.counters.tx_completed += u64::from(n);
        if self.socket.rings.tx.outstanding() > 0 {
            self.drain_tx();
        }
    }

    fn frames_held(&self) -> PortFrames {
        let rx_ring = u64::from(self.socket.rings.rx.as_ref().map_or(0, |rx| rx.pending()));
        let rx_side = self.fill_posted - self.rx_taken;
        let tx_ring = u64::from(self.socket.rings.tx.outstanding());
        let tx_side = self.tx_posted - self.comp_taken;
        PortFrames {
            fill: (rx_side - rx_ring.min(rx_side)) as usize,
            rx: rx_ring.min(rx_side) as usize,
            tx: tx_ring.min(tx_side) as usize,
            completion: (tx_side - tx_ring.min(tx_side)) as usize + self.rejected.len(),
        }
    }

    fn segment(&self) -> SegmentId {
        self.segment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports move to the worker thread that owns them; UMEM handles go to every worker.
    #[test]
    fn afxdp_ports_and_umem_handles_cross_threads() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<XdpPort>();
        send::<Umem>();
        sync::<super::super::umem::UmemRegion>();
    }
}
