//! One AF_XDP socket (XSK): creation, UMEM registration or sharing, ring setup, bind with
//! retry, statistics and the wake-up syscalls.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::AfXdpError;
use super::ring::{ConsumerRing, ProducerRing, RingMap};
use super::sys::*;
use super::umem::{Umem, UmemRegion};
use crate::phy::SegmentId;

/// Ring sizes of one socket (each a power of two, except `rx`, which may be 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSizes {
    /// Fill ring: free frames offered to the kernel for receive. The kernel wants one on
    /// every socket that has its own UMEM binding (also a TX-only one), so at least 1.
    pub fill: u32,
    /// Completion ring: frames the kernel has finished sending.
    pub completion: u32,
    /// RX ring: received frames. 0 means no RX ring at all: a TX-only socket, which the
    /// kernel accepts as long as it has a TX ring (nothing can then be redirected to it).
    pub rx: u32,
    /// TX ring: frames to send.
    pub tx: u32,
}

impl Default for RingSizes {
    /// 2048 everywhere: a few bursts of 64 of slack on each side.
    fn default() -> Self {
        Self {
            fill: 2048,
            completion: 2048,
            rx: 2048,
            tx: 2048,
        }
    }
}

impl RingSizes {
    /// These sizes with the fill and RX rings grown to at least `n` entries (a power of
    /// two), so a fill share of `n` frames fits.
    pub fn at_least(self, n: u32) -> Self {
        Self {
            fill: self.fill.max(n),
            rx: self.rx.max(n),
            ..self
        }
    }

    /// These sizes for a socket that only transmits: no RX ring and the smallest fill ring
    /// the kernel accepts (it requires one per UMEM binding but nothing is ever posted to
    /// it), completion and TX rings kept. Saves the receive side's ring memory (an RX entry
    /// is 16 bytes, a fill entry 8) on sockets that never receive.
    pub fn tx_only(self) -> Self {
        Self {
            fill: 1,
            rx: 0,
            ..self
        }
    }
}

/// Kernel drop counters of a socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Dropped for other reasons (e.g. frame too big for the chunk).
    pub rx_dropped: u64,
    /// RX descriptors the kernel found invalid.
    pub rx_invalid_descs: u64,
    /// TX descriptors the kernel found invalid (their frames are not completed).
    pub tx_invalid_descs: u64,
    /// Dropped because the RX ring was full: userspace too slow.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty: userspace did not return frames fast enough.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty when woken.
    pub tx_ring_empty_descs: u64,
}

/// How long to keep retrying a bind that fails with EBUSY (a queue whose previous socket
/// has just closed stays busy for up to ~2 s on 6.x).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindRetry {
    /// Give up after this long.
    pub deadline: Duration,
    /// First pause; doubled after each failure up to `max_pause`.
    pub first_pause: Duration,
    /// Longest pause.
    pub max_pause: Duration,
}

impl Default for BindRetry {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
            first_pause: Duration::from_millis(20),
            max_pause: Duration::from_millis(500),
        }
    }
}

/// The socket's rings, mapped.
pub(crate) struct Rings {
    pub(crate) fill: ProducerRing<u64>,
    pub(crate) completion: ConsumerRing<u64>,
    /// `None` on a TX-only socket (bound without an RX ring).
    pub(crate) rx: Option<ConsumerRing<XdpDesc>>,
    pub(crate) tx: ProducerRing<XdpDesc>,
}

/// Where a socket binds: an interface queue, with the frames of one UMEM segment.
#[derive(Clone, Copy, Debug)]
pub struct BindTarget<'a> {
    /// The UMEM segment.
    pub segment: SegmentId,
    /// Interface name (for messages).
    pub ifname: &'a str,
    /// Interface index.
    pub ifindex: u32,
    /// Receive queue.
    pub queue: u32,
}

/// How a socket gets its UMEM.
#[derive(Clone, Copy, Debug)]
pub enum UmemBinding<'a> {
    /// Registers the segment (the first socket of a segment).
    Register,
    /// Registers the segment again although a socket registered it before: that socket
    /// lost its device, and the kernel shares no UMEM through an unbound socket.
    Reregister,
    /// Shares the registration of the socket behind this descriptor (`XDP_SHARED_UMEM`).
    Share(BorrowedFd<'a>),
}

/// A bound AF_XDP socket with its rings.
pub struct XskSocket {
    // Field order matters: rings are unmapped before the fd closes, and the UMEM region is
    // released last, after the kernel has let go of it.
    pub(crate) rings: Rings,
    fd: OwnedFd,
    ifindex: u32,
    queue: u32,
    _region: Arc<UmemRegion>,
}

impl XskSocket {
    /// Creates a socket on `ifindex`/`queue` with copy mode and need_wakeup.
    ///
    /// `share_with: None` registers `umem` with this socket (once per UMEM);
    /// `Some(owner)` shares the UMEM `owner` registered (`XDP_SHARED_UMEM`), with this
    /// socket's own fill and completion rings, which lets sockets on different devices use
    /// one UMEM (Linux ≥ 5.10).
    pub fn bind(
        umem: &Umem,
        ifname: &str,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
        share_with: Option<&XskSocket>,
        retry: BindRetry,
    ) -> Result<Self, AfXdpError> {
        let how = match share_with {
            Some(s) => UmemBinding::Share(s.fd.as_fd()),
            None => UmemBinding::Register,
        };
        let target = BindTarget {
            segment: 0,
            ifname,
            ifindex,
            queue,
        };
        Self::bind_sharing(umem, target, sizes, how, retry)
    }

    /// [`XskSocket::bind`] with the UMEM given as `umem`'s segment `target.segment` and
    /// `how` saying whether this socket registers it or shares another socket's
    /// registration (given by any descriptor of that socket, e.g. a duplicate kept by the
    /// control thread after the owner's port moved to a worker).
    pub fn bind_sharing(
        umem: &Umem,
        target: BindTarget<'_>,
        sizes: RingSizes,
        how: UmemBinding<'_>,
        retry: BindRetry,
    ) -> Result<Self, AfXdpError> {
        let BindTarget {
            segment: seg,
            ifname,
            ifindex,
            queue,
        } = target;
        let share_with = match how {
            UmemBinding::Share(fd) => Some(fd),
            UmemBinding::Register | UmemBinding::Reregister => None,
        };
        for (what, n) in [
            ("fill", sizes.fill),
            ("completion", sizes.completion),
            ("rx", sizes.rx),
            ("tx", sizes.tx),
        ] {
            // rx = 0: no RX ring (a TX-only socket).
            let no_rx_ring = what == "rx" && n == 0;
            if !(n.is_power_of_two() || no_rx_ring) {
                return Err(AfXdpError::Config(format!(
                    "{what} ring size {n} is not a power of two"
                )));
            }
        }
        // SAFETY: plain socket(2) call; the result is checked and wrapped in an OwnedFd.
        let raw = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(AfXdpError::last("socket(AF_XDP)"));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let region = umem
            .segment(seg)
            .ok_or_else(|| AfXdpError::Config(format!("the UMEM has no segment {seg}")))?
            .clone();

        if share_with.is_none() {
            // A re-registration is for a segment whose registering socket lost its device
            // (its container went away): the kernel refuses to share through an unbound
            // socket, so the memory is registered again, which is allowed.
            if !region.mark_registered() && !matches!(how, UmemBinding::Reregister) {
                return Err(AfXdpError::Config(
                    "this UMEM is already registered by another socket: open the port with share_with set to that port"
                        .into(),
                ));
            }
            let reg = XdpUmemReg {
                addr: region.as_ptr() as u64,
                len: region.len() as u64,
                chunk_size: region.config().frame_size,
                headroom: 0,
                flags: 0,
                tx_metadata_len: 0,
            };
            if let Err(e) = setsockopt(fd.as_fd(), XDP_UMEM_REG, &reg, "setsockopt(XDP_UMEM_REG)") {
                region.unmark_registered();
                return Err(e);
            }
        }
        let registered_here = share_with.is_none();
        let rings =
            match Self::setup_rings_and_bind(&fd, ifname, ifindex, queue, sizes, share_with, retry)
            {
                Ok(r) => r,
                Err(e) => {
                    if registered_here {
                        region.unmark_registered();
                    }
                    return Err(e);
                }
            };
        Ok(Self {
            rings,
            fd,
            ifindex,
            queue,
            _region: region,
        })
    }

    /// Sizes and maps the rings, then binds (the part of `bind` after UMEM registration).
    fn setup_rings_and_bind(
        fd: &OwnedFd,
        ifname: &str,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
        share_with: Option<BorrowedFd<'_>>,
        retry: BindRetry,
    ) -> Result<Rings, AfXdpError> {
        setsockopt(
            fd.as_fd(),
            XDP_UMEM_FILL_RING,
            &sizes.fill,
            "setsockopt(XDP_UMEM_FILL_RING)",
        )?;
        setsockopt(
            fd.as_fd(),
            XDP_UMEM_COMPLETION_RING,
            &sizes.completion,
            "setsockopt(XDP_UMEM_COMPLETION_RING)",
        )?;
        if sizes.rx > 0 {
            setsockopt(
                fd.as_fd(),
                XDP_RX_RING,
                &sizes.rx,
                "setsockopt(XDP_RX_RING)",
            )?;
        }
        setsockopt(
            fd.as_fd(),
            XDP_TX_RING,
            &sizes.tx,
            "setsockopt(XDP_TX_RING)",
        )?;

        let off: XdpMmapOffsets =
            getsockopt(fd.as_fd(), XDP_MMAP_OFFSETS, "getsockopt(XDP_MMAP_OFFSETS)")?;
        let rings = Rings {
            fill: ProducerRing::new(
                RingMap::map(
                    fd.as_fd(),
                    &off.fr,
                    sizes.fill,
                    8,
                    XDP_UMEM_PGOFF_FILL_RING,
                    "mmap(fill ring)",
                )?,
                &off.fr,
                sizes.fill,
            ),
            completion: ConsumerRing::new(
                RingMap::map(
                    fd.as_fd(),
                    &off.cr,
                    sizes.completion,
                    8,
                    XDP_UMEM_PGOFF_COMPLETION_RING,
                    "mmap(completion ring)",
                )?,
                &off.cr,
                sizes.completion,
            ),
            rx: if sizes.rx > 0 {
                Some(ConsumerRing::new(
                    RingMap::map(
                        fd.as_fd(),
                        &off.rx,
                        sizes.rx,
                        16,
                        XDP_PGOFF_RX_RING,
                        "mmap(rx ring)",
                    )?,
                    &off.rx,
                    sizes.rx,
                ))
            } else {
                None
            },
            tx: ProducerRing::new(
                RingMap::map(
                    fd.as_fd(),
                    &off.tx,
                    sizes.tx,
                    16,
                    XDP_PGOFF_TX_RING,
                    "mmap(tx ring)",
                )?,
                &off.tx,
                sizes.tx,
            ),
        };

        let addr = match share_with {
            // Flags are inherited from the owner's binding; the kernel refuses them here.
            Some(owner) => SockaddrXdp {
                family: AF_XDP as u16,
                flags: XDP_SHARED_UMEM,
                ifindex,
                queue_id: queue,
                shared_umem_fd: owner.as_raw_fd() as u32,
            },
            None => SockaddrXdp {
                family: AF_XDP as u16,
                flags: XDP_COPY | XDP_USE_NEED_WAKEUP,
                ifindex,
                queue_id: queue,
                shared_umem_fd: 0,
            },
        };
        bind_with_retry(fd.as_fd(), &addr, ifname, retry)?;
        Ok(rings)
    }

    /// The socket's descriptor (for the XSKMAP and for poll()).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Interface index it is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Queue it is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// True when the socket has an RX ring (false: bound TX-only, `rx: 0`).
    pub fn has_rx_ring(&self) -> bool {
        self.rings.rx.is_some()
    }

    /// Sets how many TX descriptors the kernel handles per copy-mode kick
    /// (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.x). Returns false when the kernel does not know the
    /// option (it then handles 32 per kick).
    pub fn set_tx_budget(&self, budget: u32) -> Result<bool, AfXdpError> {
        match setsockopt(
            self.fd.as_fd(),
            XDP_MAX_TX_SKB_BUDGET,
            &budget,
            "setsockopt(XDP_MAX_TX_SKB_BUDGET)",
        ) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENOPROTOOPT) | Some(libc::EINVAL)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Kernel drop counters.
    pub fn statistics(&self) -> Result<XdpStatistics, AfXdpError> {
        let s: XdpStatisticsRaw = getsockopt(
            self.fd.as_fd(),
            XDP_STATISTICS,
            "getsockopt(XDP_STATISTICS)",
        )?;
        Ok(XdpStatistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }

    /// Asks the kernel to process the TX ring (copy mode: up to the TX budget per call).
    /// Transient refusals (EAGAIN, EBUSY, ENOBUFS, ENETDOWN) return `Ok(false)`: the frames
    /// stay in the ring and the next kick retries.
    pub fn kick_tx(&self) -> Result<bool, AfXdpError> {
        // SAFETY: sendto with no buffer and no address on a socket we own: the AF_XDP "wake up
        // TX" convention; nothing is read from or written to our memory.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r >= 0 {
            return Ok(true);
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        match errno {
            libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN | libc::EINTR => Ok(false),
            _ => Err(AfXdpError::from_errno("sendto(AF_XDP TX kick)", errno)),
        }
    }

    /// Wakes the receive side when the kernel asked for it (fill ring need_wakeup).
    pub fn kick_rx(&self) -> Result<(), AfXdpError> {
        // SAFETY: recvfrom with no buffer on a socket we own: the AF_XDP "wake up RX" convention.
        let r = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        match errno {
            libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN | libc::EINTR => Ok(()),
            _ => Err(AfXdpError::from_errno("recvfrom(AF_XDP RX wake-up)", errno)),
        }
    }
}

/// Binds, retrying EBUSY with exponential backoff until `retry.deadline`.
fn bind_with_retry(
    fd: BorrowedFd<'_>,
    addr: &SockaddrXdp,
    ifname: &str,
    retry: BindRetry,
) -> Result<(), AfXdpError> {
    let start = Instant::now();
    let mut pause = retry.first_pause;
    let mut attempts = 0;
    loop {
        attempts += 1;
        // SAFETY: `addr` is a valid sockaddr_xdp of the length we pass; `fd` is our socket.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (addr as *const SockaddrXdp).cast(),
                std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        };
        if r == 0 {
            if attempts > 1 {
                tracing::info!(ifname, attempts, waited = ?start.elapsed(), "AF_XDP bind succeeded after EBUSY");
            }
            return Ok(());
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        match errno {
            libc::EBUSY if start.elapsed() + pause <= retry.deadline => {
                tracing::debug!(ifname, attempts, "AF_XDP bind: EBUSY, retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(retry.max_pause);
            }
            libc::EBUSY => {
                return Err(AfXdpError::Busy {
                    ifname: ifname.to_owned(),
                    queue: addr.queue_id,
                    attempts,
                    waited: start.elapsed(),
                });
            }
            _ => return Err(AfXdpError::from_errno("bind(AF_XDP)", errno)),
        }
    }
}

/// `setsockopt(SOL_XDP, opt, value)`.
fn setsockopt<T: Copy>(
    fd: BorrowedFd<'_>,
    opt: libc::c_int,
    value: &T,
    call: &'static str,
) -> Result<(), AfXdpError> {
    // SAFETY: `value` points to a live `T` of the size we pass; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(AfXdpError::last(call))
    }
}

/// `getsockopt(SOL_XDP, opt)` into a zeroed `T` (all our `T`s are plain integer structs).
fn getsockopt<T: Copy + Default>(
    fd: BorrowedFd<'_>,
    opt: libc::c_int,
    call: &'static str,
) -> Result<T, AfXdpError> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a writable `T` of `len` bytes; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            opt,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(value)
    } else {
        Err(AfXdpError::last(call))
    }
}
