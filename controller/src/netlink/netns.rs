//! Network namespaces: create one bound at `/run/netns/NAME` (as `ip netns add` does, so
//! `ip -n NAME` sees it), open an existing one (a name, a path such as `/proc/PID/ns/net`, or
//! our own), run code inside one, and delete the ones we created.
//!
//! Code runs inside a namespace on a fresh thread that calls `setns(2)` and then exits: a
//! socket keeps the namespace it was created in, so a listener or a netlink socket made on
//! such a thread can be used from anywhere afterwards. Tokio worker threads never change
//! namespace.
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::{NetlinkError, Rtnl};

/// Where iproute2 binds named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// A network namespace we hold open. Ones created by [`Netns::create`] are deleted (unbound
/// and unlinked) when dropped; opened ones are only closed.
#[derive(Debug)]
pub struct Netns {
    /// Name for messages: the netns name, or the path it was opened from.
    label: String,
    /// An open fd on the namespace: keeps it alive while we use it, and is what `setns` takes.
    fd: File,
    /// The bind mount to remove on drop, for namespaces we created.
    owned_path: Option<PathBuf>,
}

impl Netns {
    /// Creates a new, empty namespace bound at `/run/netns/NAME` (loopback down, like
    /// `ip netns add`). It is deleted when the returned value is dropped.
    pub fn create(name: &str) -> Result<Netns, NetlinkError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(NetlinkError::Unexpected {
                op: format!("creating netns {name:?}"),
                msg: "a namespace name must be a plain file name".into(),
            });
        }
        prepare_netns_dir()?;
        let path = Path::new(NETNS_DIR).join(name);
        let op = format!("creating netns {name}");
        // The mount point must exist; create_new refuses to reuse someone else's name.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| NetlinkError::io(&op, e))?;
        let target = path.clone();
        let made = thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || -> Result<(), nix::errno::Errno> {
                // unshare(CLONE_NEWNET) changes only this thread, which ends right after.
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
            })
            .map_err(|e| NetlinkError::io(&op, e))?
            .join();
        let result = match made {
            Ok(Ok(())) => File::open(&path).map_err(|e| NetlinkError::io(&op, e)),
            Ok(Err(errno)) => Err(NetlinkError::errno(&op, errno)),
            Err(_) => Err(NetlinkError::Unexpected {
                op: op.clone(),
                msg: "the namespace thread panicked".into(),
            }),
        };
        match result {
            Ok(fd) => Ok(Netns {
                label: name.to_string(),
                fd,
                owned_path: Some(path),
            }),
            Err(e) => {
                let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Opens a namespace by name (`/run/netns/NAME`) or by path (anything with a `/`, such as
    /// `/proc/1234/ns/net`). It is not deleted on drop.
    pub fn open(name_or_path: &str) -> Result<Netns, NetlinkError> {
        let path = if name_or_path.contains('/') {
            PathBuf::from(name_or_path)
        } else {
            Path::new(NETNS_DIR).join(name_or_path)
        };
        let fd = File::open(&path)
            .map_err(|e| NetlinkError::io(format!("opening netns {}", path.display()), e))?;
        Ok(Netns {
            label: name_or_path.to_string(),
            fd,
            owned_path: None,
        })
    }

    /// The namespace the calling process runs in.
    pub fn current() -> Result<Netns, NetlinkError> {
        let mut ns = Netns::open("/proc/self/ns/net")?;
        ns.label = "the current network namespace".into();
        Ok(ns)
    }

    /// The name or path this namespace was created or opened by, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The `/run/netns/NAME` path of a namespace we created (for `nsenter --net=`).
    pub fn path(&self) -> Option<&Path> {
        self.owned_path.as_deref()
    }

    /// Runs `f` on a new thread inside this namespace and returns its result. Sockets `f`
    /// creates stay in this namespace wherever they are used later.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetlinkError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn("netns-run", f)?.join()
    }

    /// Runs `f` on a scoped thread inside this namespace and returns its result. Unlike
    /// [`Netns::run`], `f` may borrow from the caller: opening AF_XDP ports that share a UMEM
    /// the caller keeps needs exactly that (the sockets and bpf links live in the namespace
    /// of the thread that creates them).
    pub fn run_scoped<T, F>(&self, f: F) -> Result<T, NetlinkError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let op = format!("entering netns {}", self.label);
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name("netns-scoped".into())
                .spawn_scoped(s, || {
                    nix::sched::setns(&self.fd, CloneFlags::CLONE_NEWNET).map(|()| f())
                })
                .map_err(|e| NetlinkError::io(&op, e))?;
            match handle.join() {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(errno)) => Err(NetlinkError::errno(&op, errno)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Another handle on the same namespace, which never deletes it: for a component that
    /// must keep using the namespace while its creator still owns it.
    pub fn try_clone(&self) -> Result<Netns, NetlinkError> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| NetlinkError::io(format!("duplicating netns {}", self.label), e))?;
        Ok(Netns {
            label: self.label.clone(),
            fd,
            owned_path: None,
        })
    }

    /// Starts a long-lived thread inside this namespace (a responder, a proxy). Threads it
    /// spawns in turn inherit the namespace.
    pub fn spawn<T, F>(&self, name: &str, f: F) -> Result<NsThread<T>, NetlinkError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let op = format!("entering netns {}", self.label);
        let fd = self.fd.try_clone().map_err(|e| NetlinkError::io(&op, e))?;
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), nix::errno::Errno>>();
        let handle = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let entered = nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET);
                drop(fd);
                let ok = entered.is_ok();
                // The receiver waits for this; if it is gone there is nobody to tell.
                let _ = tx.send(entered);
                if ok { Some(f()) } else { None }
            })
            .map_err(|e| NetlinkError::io(&op, e))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(NsThread {
                inner: handle,
                label: self.label.clone(),
            }),
            Ok(Err(errno)) => {
                let _ = handle.join();
                Err(NetlinkError::errno(op, errno))
            }
            Err(_) => Err(NetlinkError::Unexpected {
                op,
                msg: "the thread ended before entering the namespace".into(),
            }),
        }
    }

    /// Opens an rtnetlink handle whose socket lives in this namespace. Needs a Tokio runtime;
    /// the connection task is spawned on it and ends when every clone of the handle is gone.
    pub async fn rtnl(&self) -> Result<Rtnl, NetlinkError> {
        let runtime = tokio::runtime::Handle::current();
        let op = format!("opening rtnetlink in netns {}", self.label);
        let (conn, handle) = self
            .run(move || {
                let _guard = runtime.enter();
                rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle))
            })?
            .map_err(|e| NetlinkError::io(&op, e))?;
        tokio::spawn(conn);
        Ok(Rtnl::new(handle, self.label.clone()))
    }

    /// A raw fd for netlink requests that move a link into this namespace
    /// (`IFLA_NET_NS_FD`); valid while `self` lives.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Deletes a namespace we created, reporting failure (drop does the same silently).
    pub fn delete(mut self) -> Result<(), NetlinkError> {
        self.remove_binding()
    }

    fn remove_binding(&mut self) -> Result<(), NetlinkError> {
        let Some(path) = self.owned_path.take() else {
            return Ok(());
        };
        let op = format!("deleting netns {}", self.label);
        // MNT_DETACH like `ip netns del`: the namespace dies once its last user lets go.
        let unmounted = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
        let removed = fs::remove_file(&path);
        unmounted.map_err(|e| NetlinkError::errno(&op, e))?;
        removed.map_err(|e| NetlinkError::io(&op, e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.remove_binding() {
            tracing::warn!("{e}");
        }
    }
}

/// A thread running inside a namespace (from [`Netns::spawn`]).
#[derive(Debug)]
pub struct NsThread<T> {
    /// `None` only when `setns` failed, which `spawn` reports before handing this out.
    inner: thread::JoinHandle<Option<T>>,
    label: String,
}

impl<T> NsThread<T> {
    /// Waits for the thread and returns its result; a panic becomes an error.
    pub fn join(self) -> Result<T, NetlinkError> {
        match self.inner.join() {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(NetlinkError::Unexpected {
                op: format!("running in netns {}", self.label),
                msg: "the thread could not enter the namespace".into(),
            }),
            Err(_) => Err(NetlinkError::Unexpected {
                op: format!("running in netns {}", self.label),
                msg: "the thread panicked".into(),
            }),
        }
    }
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so bindings made here show up
/// in other mount namespaces; done once per process.
fn prepare_netns_dir() -> Result<(), NetlinkError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let res = DONE.get_or_init(|| {
        fs::create_dir_all(NETNS_DIR).map_err(|e| format!("creating {NETNS_DIR}: {e}"))?;
        let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
        if nix::mount::mount(None::<&str>, NETNS_DIR, Some("none"), shared, None::<&str>).is_ok() {
            return Ok(());
        }
        // Not a mount point yet: bind it onto itself, then make it shared.
        nix::mount::mount(
            Some(NETNS_DIR),
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("bind-mounting {NETNS_DIR}: {e}"))?;
        nix::mount::mount(None::<&str>, NETNS_DIR, Some("none"), shared, None::<&str>)
            .map_err(|e| format!("making {NETNS_DIR} shared: {e}"))
    });
    res.clone().map_err(|msg| {
        if msg.contains("EPERM") || msg.contains("EACCES") {
            NetlinkError::PermissionDenied { op: msg }
        } else {
            NetlinkError::Unexpected {
                op: "preparing /run/netns".into(),
                msg,
            }
        }
    })
}

/// Whether we run with effective uid 0, read from `/proc/self/status` (checked up front so
/// the lab and `run` can say "run as root" before anything half-built needs undoing).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
