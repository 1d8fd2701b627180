//! The UMEM: one mmap'd region, cut into equal frames, shared by the sockets of every port
//! (and by the kernel, which copies packets into and out of it).
//!
//! # Sharing between workers
//! [`UmemRegion`] owns the mapping and is shared through an `Arc`; each worker thread holds
//! its own [`Umem`] handle (`Umem::clone`), which is the `FrameMemory` its engine and ports
//! use. The handles do not synchronise access to bytes: the *frame ownership discipline*
//! does. A frame is owned by exactly one party at a time — a worker's free list, a port's
//! rings (i.e. the kernel), or a batch in flight — and only its owner reads or writes it.
//! Frames move between workers as [`crate::phy::FrameDesc`]s through a queue (a release/acquire
//! hand-off), never as bytes, so the sender stops touching a frame before the receiver
//! starts. This is the same contract the kernel relies on for the rings.
//!
//! # Segments
//! A [`Umem`] is a set of up to [`MAX_SEGMENTS`] regions (segments), each registered with
//! the kernel by the first socket bound to it and shared by the others. Frame addresses
//! carry their segment in their high bits ([`crate::phy::SEGMENT_SHIFT`]). The kernel
//! allocates per socket a head for every frame of the UMEM the socket is bound to, so the
//! controller keeps segments small and adds one when the ports outgrow the others
//! ([`Umem::add_segment`]); segments are never removed while the handle lives.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::error::AfXdpError;
use crate::phy::{FrameMemory, SEGMENT_SHIFT, SegmentId};

/// Most segments one [`Umem`] can hold.
pub const MAX_SEGMENTS: usize = 1024;

const LOCAL_MASK: u64 = (1 << SEGMENT_SHIFT) - 1;

/// Shape of a UMEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UmemConfig {
    /// Number of frames. Enough for every port's fill ring plus frames in flight.
    pub frame_count: u32,
    /// Bytes per frame: a power of two, 2048 or 4096 (the kernel's aligned-chunk mode).
    pub frame_size: u32,
}

impl Default for UmemConfig {
    /// 16 Ki frames of 2048 bytes (32 MiB): room for several ports' 2048-entry fill rings.
    fn default() -> Self {
        Self {
            frame_count: 16 * 1024,
            frame_size: 2048,
        }
    }
}

/// The mapped memory. Unmapped when the last handle (and every socket, which holds one)
/// is gone.
pub struct UmemRegion {
    ptr: *mut u8,
    len: usize,
    config: UmemConfig,
    /// Set once a socket has registered this region with the kernel (`XDP_UMEM_REG`); later
    /// sockets must share that socket's UMEM instead of registering it again.
    registered: AtomicBool,
}

// SAFETY: the region is a plain memory mapping with no thread affinity; access to its bytes is
// governed by the frame ownership discipline documented at module level.
unsafe impl Send for UmemRegion {}
// SAFETY: as above; `&UmemRegion` only exposes the pointer through `Umem`, whose byte access
// is confined to frames the caller owns.
unsafe impl Sync for UmemRegion {}

impl UmemRegion {
    /// Start of the region (for `XDP_UMEM_REG`).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length region (never: [`Umem::new`] refuses one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The region's shape.
    pub fn config(&self) -> UmemConfig {
        self.config
    }

    /// Marks the region registered; false if it already was.
    pub(crate) fn mark_registered(&self) -> bool {
        !self.registered.swap(true, Ordering::AcqRel)
    }

    /// Undoes [`Self::mark_registered`] after a failed registration.
    pub(crate) fn unmark_registered(&self) {
        self.registered.store(false, Ordering::Release);
    }
}

impl Drop for UmemRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap in `Umem::new` and nothing refers to
        // the region any more (this is the last Arc; sockets hold Arcs until they close).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A handle on a UMEM: the `FrameMemory` of AF_XDP ports. Clone it to give another worker
/// thread its own view of the same regions (see the module documentation for the rules).
#[derive(Clone)]
pub struct Umem {
    segments: Arc<Segments>,
    /// Segment 0's shape, which every segment's frame size follows.
    first: UmemConfig,
}

/// The regions of a UMEM: written once each (by [`Umem::add_segment`]), read lock-free.
struct Segments {
    regions: Box<[OnceLock<Arc<UmemRegion>>]>,
    count: AtomicUsize,
}

impl Umem {
    /// Maps a zeroed region for `config` as segment 0 (populated up front, so the first
    /// packets do not fault).
    pub fn new(config: UmemConfig) -> Result<Self, AfXdpError> {
        let first = map_region(config)?;
        let regions: Box<[OnceLock<Arc<UmemRegion>>]> =
            (0..MAX_SEGMENTS).map(|_| OnceLock::new()).collect();
        let _ = regions[0].set(Arc::new(first));
        Ok(Self {
            segments: Arc::new(Segments {
                regions,
                count: AtomicUsize::new(1),
            }),
            first: config,
        })
    }

    /// Maps another segment of `config.frame_count` frames (same frame size as segment 0)
    /// and returns its id. Call it from one control thread: concurrent calls may race for
    /// the same slot, and the loser gets an error.
    pub fn add_segment(&self, frame_count: u32) -> Result<SegmentId, AfXdpError> {
        let n = self.segments.count.load(Ordering::Acquire);
        if n >= MAX_SEGMENTS {
            return Err(AfXdpError::Config(format!(
                "the UMEM already has its {MAX_SEGMENTS} segments: no room for more ports"
            )));
        }
        let config = UmemConfig {
            frame_count,
            frame_size: self.first.frame_size,
        };
        let region = map_region(config)?;
        if self.segments.regions[n].set(Arc::new(region)).is_err() {
            return Err(AfXdpError::Config(
                "two threads added a UMEM segment at once".into(),
            ));
        }
        self.segments.count.store(n + 1, Ordering::Release);
        Ok(n as SegmentId)
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.count.load(Ordering::Acquire)
    }

    /// Frames of segment `seg` (0 for a segment that does not exist).
    pub fn segment_frames(&self, seg: SegmentId) -> usize {
        self.segment(seg)
            .map_or(0, |r| r.config.frame_count as usize)
    }

    /// Frames of every segment together.
    pub fn total_frames(&self) -> usize {
        (0..self.segment_count())
            .map(|s| self.segment_frames(s as SegmentId))
            .sum()
    }

    /// The region of segment `seg`, if it exists.
    pub fn segment(&self, seg: SegmentId) -> Option<&Arc<UmemRegion>> {
        self.segments.regions.get(usize::from(seg))?.get()
    }

    /// True when `addr..addr+len` lies inside one frame of segment `seg`, i.e. a descriptor
    /// the kernel accepts on a socket bound to that segment.
    pub fn desc_in_bounds(&self, seg: SegmentId, addr: u64, len: u32) -> bool {
        if addr >> SEGMENT_SHIFT != u64::from(seg) {
            return false;
        }
        let Some(region) = self.segment(seg) else {
            return false;
        };
        let local = addr & LOCAL_MASK;
        let fs = u64::from(region.config.frame_size);
        let end = local.saturating_add(u64::from(len));
        end <= region.len as u64 && (len == 0 || local / fs == (end - 1) / fs)
    }

    #[inline]
    fn range(&self, addr: u64, len: usize) -> Option<(&UmemRegion, usize, usize)> {
        let region = self.segment((addr >> SEGMENT_SHIFT) as SegmentId)?;
        let start = usize::try_from(addr & LOCAL_MASK).ok()?;
        let end = start.checked_add(len)?;
        (end <= region.len).then_some((region, start, len))
    }
}

/// Maps an anonymous, populated region for `config`.
fn map_region(config: UmemConfig) -> Result<UmemRegion, AfXdpError> {
    if !config.frame_size.is_power_of_two() || !(2048..=4096).contains(&config.frame_size) {
        return Err(AfXdpError::Config(format!(
            "frame size {} must be 2048 or 4096 (a power of two the kernel's aligned mode accepts)",
            config.frame_size
        )));
    }
    if config.frame_count == 0 {
        return Err(AfXdpError::Config("a UMEM needs at least one frame".into()));
    }
    let len = config.frame_count as usize * config.frame_size as usize;
    // SAFETY: anonymous private mapping with no address hint; the result is checked below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(AfXdpError::last("mmap(UMEM)"));
    }
    Ok(UmemRegion {
        ptr: ptr.cast(),
        len,
        config,
        registered: AtomicBool::new(false),
    })
}

impl FrameMemory for Umem {
    fn frame_size(&self) -> usize {
        self.first.frame_size as usize
    }

    /// Frames of segment 0: what a one-segment caller hands out as its free list.
    fn frame_count(&self) -> usize {
        self.first.frame_count as usize
    }

    #[inline]
    fn bytes(&self, addr: u64, len: usize) -> &[u8] {
        match self.range(addr, len) {
            // SAFETY: the range is inside the live mapping of its segment (checked by
            // `range`); the caller owns the frame (ownership discipline), so neither the
            // kernel nor another worker writes it while this borrow lives.
            Some((region, start, len)) => unsafe {
                std::slice::from_raw_parts(region.ptr.add(start), len)
            },
            None => &[],
        }
    }

    #[inline]
    fn bytes_mut(&mut self, addr: u64, len: usize) -> &mut [u8] {
        match self.range(addr, len) {
            // SAFETY: as in `bytes`; additionally `&mut self` ensures this handle hands out one
            // mutable borrow at a time, and other handles only touch frames they own.
            Some((region, start, len)) => unsafe {
                std::slice::from_raw_parts_mut(region.ptr.add(start), len)
            },
            None => &mut [],
        }
    }

    #[inline]
    fn copy_frame(&mut self, from: u64, to: u64, len: usize) -> bool {
        let (Some((src, s, _)), Some((dst, d, _))) = (self.range(from, len), self.range(to, len))
        else {
            return false;
        };
        if from / self.frame_size() as u64 == to / self.frame_size() as u64 {
            return false;
        }
        // SAFETY: both ranges are inside live mappings (checked by `range`) and lie in two
        // different frames (checked above), which the caller owns, so they do not overlap and
        // nothing else touches them during the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(src.ptr.add(s), dst.ptr.add(d), len);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn afxdp_umem_maps_and_bounds_checks() {
        let mut umem = Umem::new(UmemConfig {
            frame_count: 4,
            frame_size: 2048,
        })
        .unwrap();
        assert_eq!(umem.frame_count(), 4);
        umem.bytes_mut(2048 + 10, 4).copy_from_slice(&[1, 2, 3, 4]);
        let view = umem.clone();
        assert_eq!(view.bytes(2048 + 10, 4), &[1, 2, 3, 4]);
        assert!(umem.bytes(4 * 2048 - 1, 2).is_empty());
        assert!(umem.desc_in_bounds(0, 2048 + 256, 1500));
        assert!(
            !umem.desc_in_bounds(0, 2048 + 1000, 1500),
            "crosses into the next frame"
        );
        assert!(!umem.desc_in_bounds(0, 4 * 2048, 1));
        let seg = umem.add_segment(2).unwrap();
        assert_eq!(seg, 1);
        assert_eq!(umem.total_frames(), 6);
        let a = crate::phy::segment_base(seg) + 2048 + 4;
        umem.bytes_mut(a, 2).copy_from_slice(&[7, 8]);
        assert_eq!(view.bytes(a, 2), &[7, 8], "clones see segments added later");
        assert!(umem.desc_in_bounds(seg, a, 100));
        assert!(!umem.desc_in_bounds(0, a, 100), "another segment's frame");
        assert!(umem.bytes(crate::phy::segment_base(2), 1).is_empty());
        assert!(
            Umem::new(UmemConfig {
                frame_count: 4,
                frame_size: 3000
            })
            .is_err()
        );
    }
}
