//! Adaptive polling: spin while frames flow, sleep in `poll()` when idle.
//!
//! Under load a worker must not sleep (a syscall per batch and a wake-up latency per packet
//! would halve the rate); idle, it must not burn a core. The poller counts rounds without
//! progress and, past `spin_rounds`, sleeps in `poll(POLLIN)` on every port's socket with a
//! timeout, so arriving frames or the timeout (for completions and control messages) wake it.
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use super::error::AfXdpError;

/// When to stop spinning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollConfig {
    /// Empty rounds tolerated before sleeping (`u32::MAX`: always busy-poll).
    pub spin_rounds: u32,
    /// Longest sleep; bounds how late completions and control messages are seen when idle.
    pub sleep_timeout: Duration,
}

impl Default for PollConfig {
    /// ~100–200 µs of spinning (an empty round is a few ring loads), then 100 ms sleeps:
    /// arriving frames wake the poller through the sockets, and a worker's peers and its
    /// control channel wake it through its wake socket, so the timeout only bounds how long
    /// completed TX frames wait to be reclaimed while nothing else happens.
    fn default() -> Self {
        Self {
            spin_rounds: 2000,
            sleep_timeout: Duration::from_millis(100),
        }
    }
}

/// What the poller did this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// Kept spinning.
    Spun,
    /// Slept in poll() and woke because a socket became readable.
    WokeReadable,
    /// Slept in poll() until the timeout.
    TimedOut,
}

/// The spin/sleep switch of one worker.
pub struct AdaptivePoller {
    pollfds: Vec<libc::pollfd>,
    config: PollConfig,
    idle_rounds: u32,
    sleeps: u64,
}

impl AdaptivePoller {
    /// A poller over the sockets `fds` (the ports' [`super::XdpPort::fd`]). The caller keeps
    /// those sockets open while it uses the poller.
    pub fn new(fds: &[BorrowedFd<'_>], config: PollConfig) -> Self {
        let pollfds = fds
            .iter()
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Self {
            pollfds,
            config,
            idle_rounds: 0,
            sleeps: 0,
        }
    }

    /// Ends a round of the worker loop: `progress` says whether any frame moved. Sleeps
    /// when the worker has been idle long enough (fill rings must be topped up first so
    /// frames can arrive while it sleeps).
    pub fn end_round(&mut self, progress: bool) -> Result<PollOutcome, AfXdpError> {
        if progress {
            self.idle_rounds = 0;
            return Ok(PollOutcome::Spun);
        }
        self.idle_rounds = self.idle_rounds.saturating_add(1);
        if self.idle_rounds < self.config.spin_rounds {
            std::hint::spin_loop();
            return Ok(PollOutcome::Spun);
        }
        self.sleeps += 1;
        let timeout = self.config.sleep_timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `pollfds` is a valid array of `len` pollfd structs; poll only writes `revents`.
        let r = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                timeout,
            )
        };
        if r < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno == libc::EINTR {
                return Ok(PollOutcome::TimedOut);
            }
            return Err(AfXdpError::from_errno("poll(AF_XDP sockets)", errno));
        }
        if r > 0 {
            // Stay awake: traffic resumed.
            self.idle_rounds = 0;
            Ok(PollOutcome::WokeReadable)
        } else {
            Ok(PollOutcome::TimedOut)
        }
    }

    /// Consecutive rounds without progress so far: a caller that must announce its sleep
    /// (so peers know to wake it) checks whether the next empty round will sleep.
    pub fn idle_rounds(&self) -> u32 {
        self.idle_rounds
    }

    /// Times the poller went to sleep (an idle worker's wake-ups per second is this rate).
    pub fn sleeps(&self) -> u64 {
        self.sleeps
    }
}
