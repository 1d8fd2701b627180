//! The four single-producer/single-consumer rings shared with the kernel.
//!
//! Ordering: the side that writes entries publishes them with a Release store of its index;
//! the other side loads that index with Acquire before reading entries. The consumer
//! publishes its index with Release after it has read the entries, so the producer (which
//! loads it with Acquire) never overwrites an entry still being read. Both sides keep cached
//! copies of the other's index and refresh them only when the cache says the ring is
//! full/empty, so the shared cache lines are touched once per batch, not per entry.
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use super::error::AfXdpError;
use super::sys::{XDP_RING_NEED_WAKEUP, XdpRingOffset};

/// An mmap'd ring area; unmapped on drop.
pub(crate) struct RingMap {
    ptr: *mut u8,
    len: usize,
    /// True when `ptr` came from mmap (tests back rings with heap memory).
    mapped: bool,
}

impl RingMap {
    /// Maps the ring at page offset `pgoff` of socket `fd`, sized for `entries` of `entry_size`.
    pub(crate) fn map(
        fd: BorrowedFd<'_>,
        off: &XdpRingOffset,
        entries: u32,
        entry_size: usize,
        pgoff: libc::off_t,
        what: &'static str,
    ) -> Result<Self, AfXdpError> {
        let len = off.desc as usize + entries as usize * entry_size;
        // SAFETY: shared mapping of a kernel ring of an AF_XDP socket we own; the kernel checks
        // `pgoff` and `len` against the ring it allocated; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(AfXdpError::last(what));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            mapped: true,
        })
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the mapping was created by `map` with this length and the ring that points
            // into it is being dropped with it.
            unsafe {
                libc::munmap(self.ptr.cast(), self.len);
            }
        }
    }
}

/// Pointers into a ring area and the cached indices; shared by both ring directions.
struct RingCore<T> {
    _map: RingMap,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    mask: u32,
    size: u32,
}

impl<T: Copy> RingCore<T> {
    fn new(map: RingMap, off: &XdpRingOffset, size: u32) -> Self {
        // SAFETY: the kernel's offsets point inside the mapping (it computed them for this
        // ring); producer/consumer/flags are 4-byte aligned u32s the kernel updates atomically.
        unsafe {
            Self {
                producer: map.ptr.add(off.producer as usize).cast(),
                consumer: map.ptr.add(off.consumer as usize).cast(),
                flags: map.ptr.add(off.flags as usize).cast(),
                descs: map.ptr.add(off.desc as usize).cast(),
                mask: size - 1,
                size,
                _map: map,
            }
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping owned by `self._map` (see `new`).
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as in `producer`.
        let flags = unsafe { &*self.flags };
        flags.load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }

    fn write(&mut self, idx: u32, value: T) {
        // SAFETY: `idx & mask` < size, the number of entries mapped; the entry is ours to write
        // (reserved between the cached consumer and producer indices).
        unsafe { self.descs.add((idx & self.mask) as usize).write(value) }
    }

    fn read(&self, idx: u32) -> T {
        // SAFETY: `idx & mask` < size; the entry was published by the producer (Acquire load
        // of its index) and is not released back yet.
        unsafe { self.descs.add((idx & self.mask) as usize).read() }
    }
}

/// A ring we produce into (fill, TX).
pub(crate) struct ProducerRing<T> {
    core: RingCore<T>,
    cached_prod: u32,
    /// Kernel's consumer index + ring size: the first index we may not write.
    cached_cons: u32,
}

// SAFETY: the ring is exclusively owned by one port (single producer); the raw pointers refer to
// a mapping owned by the ring itself, valid on any thread.
unsafe impl<T: Send> Send for ProducerRing<T> {}

impl<T: Copy> ProducerRing<T> {
    pub(crate) fn new(map: RingMap, off: &XdpRingOffset, size: u32) -> Self {
        let core = RingCore::new(map, off, size);
        let cached_prod = core.producer().load(Ordering::Relaxed);
        let cached_cons = core.consumer().load(Ordering::Acquire).wrapping_add(size);
        Self {
            core,
            cached_prod,
            cached_cons,
        }
    }

    /// Free entries, refreshing the cached consumer index only if fewer than `wanted` are known.
    pub(crate) fn free(&mut self, wanted: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= wanted {
            return free;
        }
        self.cached_cons = self
            .core
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.core.size);
        self.cached_cons.wrapping_sub(self.cached_prod)
    }

    /// Writes entry `i` of the next batch (i < what `free` returned).
    pub(crate) fn write(&mut self, i: u32, value: T) {
        self.core.write(self.cached_prod.wrapping_add(i), value);
    }

    /// Publishes `n` written entries to the kernel.
    pub(crate) fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.core
            .producer()
            .store(self.cached_prod, Ordering::Release);
    }

    /// Entries published but not yet consumed by the kernel.
    pub(crate) fn outstanding(&self) -> u32 {
        self.cached_prod
            .wrapping_sub(self.core.consumer().load(Ordering::Acquire))
    }

    /// The kernel asked for a syscall before it consumes more.
    pub(crate) fn needs_wakeup(&self) -> bool {
        self.core.needs_wakeup()
    }
}

/// A ring we consume from (RX, completion).
pub(crate) struct ConsumerRing<T> {
    core: RingCore<T>,
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: as for `ProducerRing`: single consumer, exclusively owned.
unsafe impl<T: Send> Send for ConsumerRing<T> {}

impl<T: Copy> ConsumerRing<T> {
    pub(crate) fn new(map: RingMap, off: &XdpRingOffset, size: u32) -> Self {
        let core = RingCore::new(map, off, size);
        let cached_cons = core.consumer().load(Ordering::Relaxed);
        let cached_prod = core.producer().load(Ordering::Acquire);
        Self {
            core,
            cached_prod,
            cached_cons,
        }
    }

    /// Entries ready to read, at most `max`; refreshes the producer index when the cache is empty.
    pub(crate) fn available(&mut self, max: u32) -> u32 {
        let mut n = self.cached_prod.wrapping_sub(self.cached_cons);
        if n == 0 {
            self.cached_prod = self.core.producer().load(Ordering::Acquire);
            n = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        n.min(max)
    }

    /// Reads entry `i` of the available batch.
    pub(crate) fn read(&self, i: u32) -> T {
        self.core.read(self.cached_cons.wrapping_add(i))
    }

    /// Gives `n` read entries back to the kernel.
    pub(crate) fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.core
            .consumer()
            .store(self.cached_cons, Ordering::Release);
    }

    /// Entries the kernel has published that we have not released (fresh read, no cache).
    pub(crate) fn pending(&self) -> u32 {
        self.core
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(self.cached_cons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring laid out like the kernel's (prod, cons, flags, descs) in heap memory; the test
    /// plays the kernel through the same atomics.
    fn heap_ring(size: u32) -> (Vec<u64>, XdpRingOffset) {
        let buf = vec![0u64; 4 + size as usize];
        let off = XdpRingOffset {
            producer: 0,
            consumer: 8,
            flags: 16,
            desc: 32,
        };
        (buf, off)
    }

    #[test]
    fn afxdp_rings_wrap_and_respect_capacity() {
        let size = 8;
        let (mut buf, off) = heap_ring(size);
        let map = RingMap {
            ptr: buf.as_mut_ptr().cast(),
            len: buf.len() * 8,
            mapped: false,
        };
        let map2 = RingMap {
            ptr: buf.as_mut_ptr().cast(),
            len: buf.len() * 8,
            mapped: false,
        };
        let mut prod = ProducerRing::<u64>::new(map, &off, size);
        let mut cons = ConsumerRing::<u64>::new(map2, &off, size);
        let mut next = 0u64;
        let mut expect = 0u64;
        for round in 0..50 {
            let want = (round % 5 + 1) as u32;
            let n = prod.free(want).min(want);
            for i in 0..n {
                prod.write(i, next);
                next += 1;
            }
            prod.submit(n);
            assert!(prod.outstanding() <= size);
            let got = cons.available(3);
            for i in 0..got {
                assert_eq!(cons.read(i), expect);
                expect += 1;
            }
            cons.release(got);
        }
        // Fill to the brim: the producer must stop at exactly `size` outstanding entries.
        let n = prod.free(size);
        for i in 0..n {
            prod.write(i, next + u64::from(i));
        }
        prod.submit(n);
        assert_eq!(prod.outstanding(), size);
        assert_eq!(prod.free(1), 0);
        drop((prod, cons));
        drop(buf);
    }
}
