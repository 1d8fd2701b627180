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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::AfXdpError;
use crate::phy::FrameMemory;

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
/// thread its own view of the same region (see the module documentation for the rules).
#[derive(Clone)]
pub struct Umem {
    region: Arc<UmemRegion>,
}

impl Umem {
    /// Maps a zeroed region for `config` (populated up front, so the first packets do not fault).
    pub fn new(config: UmemConfig) -> Result<Self, AfXdpError> {
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
        let region = UmemRegion {
            ptr: ptr.cast(),
            len,
            config,
            registered: AtomicBool::new(false),
        };
        Ok(Self {
            region: Arc::new(region),
        })
    }

    /// The shared region (sockets keep it alive while the kernel may still touch it).
    pub fn region(&self) -> &Arc<UmemRegion> {
        &self.region
    }

    /// True when `addr..addr+len` lies inside one frame, i.e. a descriptor the kernel accepts.
    pub fn desc_in_bounds(&self, addr: u64, len: u32) -> bool {
        let fs = u64::from(self.region.config.frame_size);
        let end = addr.saturating_add(u64::from(len));
        end <= self.region.len as u64 && (len == 0 || addr / fs == (end - 1) / fs)
    }

    fn range(&self, addr: u64, len: usize) -> Option<(usize, usize)> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.region.len).then_some((start, len))
    }
}

impl FrameMemory for Umem {
    fn frame_size(&self) -> usize {
        self.region.config.frame_size as usize
    }

    fn frame_count(&self) -> usize {
        self.region.config.frame_count as usize
    }

    fn bytes(&self, addr: u64, len: usize) -> &[u8] {
        match self.range(addr, len) {
            // SAFETY: the range is inside the live mapping (checked by `range`); the caller owns
            // the frame (ownership discipline), so neither the kernel nor another worker writes
            // it while this borrow lives.
            Some((start, len)) => unsafe {
                std::slice::from_raw_parts(self.region.ptr.add(start), len)
            },
            None => &[],
        }
    }

    fn bytes_mut(&mut self, addr: u64, len: usize) -> &mut [u8] {
        match self.range(addr, len) {
            // SAFETY: as in `bytes`; additionally `&mut self` ensures this handle hands out one
            // mutable borrow at a time, and other handles only touch frames they own.
            Some((start, len)) => unsafe {
                std::slice::from_raw_parts_mut(self.region.ptr.add(start), len)
            },
            None => &mut [],
        }
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
        assert!(umem.desc_in_bounds(2048 + 256, 1500));
        assert!(
            !umem.desc_in_bounds(2048 + 1000, 1500),
            "crosses into the next frame"
        );
        assert!(!umem.desc_in_bounds(4 * 2048, 1));
        assert!(
            Umem::new(UmemConfig {
                frame_count: 4,
                frame_size: 3000
            })
            .is_err()
        );
    }
}
