//! Which ports have frames waiting: an epoll set over the ports' AF_XDP sockets.
//!
//! Why epoll and not `poll()` or a scan of every ring: the cost of asking must not grow with
//! idle ports. The kernel keeps an epoll set's ready list up to date as sockets receive, so
//! a zero-timeout wait returns only the sockets with frames (O(ready), not O(ports)), and an
//! idle worker sleeps in the same call with a timeout.
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{Timespec, epoll};

/// The token the worker's own wake socket is registered with.
pub(super) const WAKE_TOKEN: u64 = u64::MAX;

/// Readiness events returned per wait; more ready sockets are returned by the next wait.
const EVENTS_PER_WAIT: usize = 256;

/// An epoll set of sockets, each registered with a token (a port id, or [`WAKE_TOKEN`]).
pub(super) struct ReadySet {
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
}

impl ReadySet {
    /// An empty set.
    pub(super) fn new() -> std::io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let blank = epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        };
        Ok(Self {
            epoll,
            events: vec![blank; EVENTS_PER_WAIT],
        })
    }

    /// Watches `fd` for readability (level-triggered), reporting it as `token`.
    pub(super) fn add(&self, fd: BorrowedFd<'_>, token: u64) -> std::io::Result<()> {
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )?;
        Ok(())
    }

    /// Stops watching `fd` (before the socket closes, so no stale event names its token).
    pub(super) fn remove(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        epoll::delete(&self.epoll, fd)?;
        Ok(())
    }

    /// Waits up to `timeout` (`Duration::ZERO`: just look) and calls `ready` with the token
    /// of every socket that has frames. Returns how many were ready; an interrupted wait
    /// counts as none.
    pub(super) fn wait(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut(u64),
    ) -> std::io::Result<usize> {
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let n = match epoll::wait(&self.epoll, &mut self.events, Some(&ts)) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for e in &self.events[..n] {
            ready(e.data.u64());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn reports_only_readable_sockets_by_token() {
        let mut set = ReadySet::new().unwrap();
        let pairs: Vec<_> = (0..100).map(|_| UnixDatagram::pair().unwrap()).collect();
        for (i, (_, rx)) in pairs.iter().enumerate() {
            set.add(rx.as_fd(), i as u64).unwrap();
        }
        let mut seen = Vec::new();
        assert_eq!(set.wait(Duration::ZERO, |t| seen.push(t)).unwrap(), 0);
        pairs[42].0.send(b"x").unwrap();
        pairs[7].0.send(b"x").unwrap();
        set.wait(Duration::from_millis(100), |t| seen.push(t))
            .unwrap();
        seen.sort_unstable();
        assert_eq!(seen, vec![7, 42]);
        set.remove(pairs[42].1.as_fd()).unwrap();
        seen.clear();
        set.wait(Duration::ZERO, |t| seen.push(t)).unwrap();
        assert_eq!(seen, vec![7], "a removed socket is no longer reported");
    }
}
