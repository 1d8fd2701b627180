//! Placing the calling thread: in a network namespace (AF_XDP sockets and XDP links belong
//! to the namespace of the thread that creates them) and on a CPU.
use std::fs::File;
use std::os::fd::AsRawFd;

use super::error::AfXdpError;

/// Moves the calling thread back to the namespace it came from when dropped.
pub struct NetnsReturn {
    original: File,
}

impl Drop for NetnsReturn {
    fn drop(&mut self) {
        // SAFETY: setns on a namespace file we opened; affects only the calling thread's netns.
        let r = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if r != 0 {
            tracing::error!(error = %std::io::Error::last_os_error(), "could not return the thread to its network namespace");
        }
    }
}

/// Moves the calling thread (only it, not the process) into network namespace `name`
/// (`/run/netns/NAME`, as `ip netns add` creates it, or an absolute path). Returns a guard
/// that moves it back. Needs CAP_SYS_ADMIN.
pub fn enter_netns(name: &str) -> Result<NetnsReturn, AfXdpError> {
    let path = if name.starts_with('/') {
        name.to_owned()
    } else {
        format!("/run/netns/{name}")
    };
    let original = File::open("/proc/thread-self/ns/net").map_err(|e| AfXdpError::Sys {
        call: "open(/proc/thread-self/ns/net)",
        errno: e.raw_os_error().unwrap_or(0),
        errno_name: "errno",
        source: e,
    })?;
    let target = File::open(&path)
        .map_err(|e| AfXdpError::Config(format!("network namespace {path}: {e}")))?;
    // SAFETY: setns with a namespace file descriptor we just opened; moves only this thread.
    let r = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(AfXdpError::last("setns(CLONE_NEWNET)"));
    }
    Ok(NetnsReturn { original })
}

/// Pins the calling thread to `cpu`, so a busy-polling worker does not migrate.
pub fn pin_current_thread(cpu: usize) -> Result<(), AfXdpError> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(AfXdpError::Config(format!(
            "CPU {cpu} is beyond CPU_SETSIZE"
        )));
    }
    // SAFETY: cpu_set_t is a plain bitmask, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE (checked above); `set` is a valid cpu_set_t.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 means the calling thread; `set` is valid for the size we pass.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        Err(AfXdpError::last("sched_setaffinity"))
    } else {
        Ok(())
    }
}
