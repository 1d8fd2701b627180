//! Shared helpers of the worker tests: an in-memory port a test thread and a worker thread
//! can both hold.
#![allow(dead_code)] // each test file uses a subset

use dataplane::afxdp::Umem;
use dataplane::phy::memory::{MemoryPort, MemoryPortConfig};
use dataplane::phy::{DescBatch, FreeList, Port, PortFrames};
use dataplane::worker::WorkerPort;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

/// An in-memory port the test thread can inject into while a worker drives it. The lock is
/// the test's wire, not the product's hot path.
#[derive(Clone)]
pub(crate) struct SharedPort(pub(crate) Arc<Mutex<MemoryPort>>);

impl SharedPort {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(MemoryPort::new(MemoryPortConfig {
            capture: true,
            ..Default::default()
        }))))
    }
    pub(crate) fn inject(&self, f: &[u8]) -> bool {
        self.0.lock().unwrap().inject(f)
    }
    pub(crate) fn take_sent(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().take_sent()
    }
}

impl Port<Umem> for SharedPort {
    fn fill(&mut self, mem: &mut Umem, free: &mut FreeList) {
        self.0.lock().unwrap().fill(mem, free)
    }
    fn receive(&mut self, mem: &mut Umem, out: &mut DescBatch) {
        Port::<Umem>::receive(&mut *self.0.lock().unwrap(), mem, out)
    }
    fn transmit(&mut self, mem: &mut Umem, batch: &mut DescBatch) {
        Port::<Umem>::transmit(&mut *self.0.lock().unwrap(), mem, batch)
    }
    fn complete(&mut self, free: &mut FreeList) {
        Port::<Umem>::complete(&mut *self.0.lock().unwrap(), free)
    }
    fn frames_held(&self) -> PortFrames {
        Port::<Umem>::frames_held(&*self.0.lock().unwrap())
    }
}

impl WorkerPort<Umem> for SharedPort {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn needs_visit(&self) -> bool {
        true
    }
    fn starved(&self) -> u64 {
        self.0.lock().unwrap().stats().fill_starved
    }
    fn close(self) -> Vec<u64> {
        self.0.lock().unwrap().drain_frames()
    }
}
