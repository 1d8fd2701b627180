//! The takeover's record on disk: which ports were taken off which bridge and which gateway
//! pair was created, written before each change so that a crash at any moment (even
//! `kill -9` between two netlink calls) leaves enough behind to put everything back.
//!
//! Writes are atomic (a temporary file renamed over the old one), so a reader sees either
//! the previous record or the new one, never a torn file.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TakeoverError;
use crate::netlink::Netns;

/// Format version of the state file; bumped if its meaning changes.
pub(super) const STATE_VERSION: u32 = 1;

/// One interface taken off the bridge (or the gateway link), by name and index: the index
/// tells a container's veth from a new one that reuses its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenPort {
    /// Interface name in the bridge's namespace.
    pub name: String,
    /// Interface index in the bridge's namespace.
    pub index: u32,
    /// Its hairpin mode on the bridge when taken, given back with it (Docker turns it on
    /// when its userland proxy is off; published ports reached from containers need it).
    #[serde(default)]
    pub hairpin: bool,
}

/// The gateway veth pair as recorded: the names are written before the pair exists (so a
/// crash right after creating it still gets it deleted), the indexes once it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct GatewayRecord {
    /// The end enslaved to the bridge.
    pub outer: String,
    /// The end the dataplane's gateway port binds to.
    pub inner: String,
    /// Index of `outer`, once created.
    pub outer_index: Option<u32>,
    /// Index of `inner`, once created.
    pub inner_index: Option<u32>,
}

/// Everything needed to undo a takeover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TakeoverRecord {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Label of the namespace the bridge lives in, for people reading the file.
    pub netns: String,
    /// The bridge taken.
    pub bridge: String,
    /// The gateway pair.
    pub gateway: GatewayRecord,
    /// The container veths taken off the bridge, in the order they were taken.
    pub ports: Vec<TakenPort>,
}

/// Where the state of `bridge` in `netns` lives: `<state_dir>/<netns-tag>-<bridge>.json`.
/// The namespace the process runs in is tagged `host`; others by their name or path, made
/// file-name safe.
pub fn state_path(state_dir: &Path, netns: &Netns, bridge: &str) -> PathBuf {
    let is_current = Netns::current().is_ok_and(|cur| cur.label() == netns.label());
    let tag = if is_current {
        "host".to_string()
    } else {
        file_safe(netns.label())
    };
    state_dir.join(format!("{tag}-{}.json", file_safe(bridge)))
}

/// Keeps letters, digits, `-`, `_` and `.`; anything else (slashes of a path, spaces)
/// becomes `_`, and leading separators are dropped.
fn file_safe(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = mapped.trim_start_matches(['_', '.']);
    if trimmed.is_empty() {
        "ns".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Reads the record at `path`; `Ok(None)` when there is none.
pub(super) fn read(path: &Path) -> Result<Option<TakeoverRecord>, TakeoverError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TakeoverError::StateUnreadable {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TakeoverError::StateCorrupt {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes the record atomically: a temporary file beside it, flushed to disk, renamed over.
///
/// The record tells a later `restore` (run as root) which links to move and delete, so it is
/// private whatever the umask: a missing directory is made mode 0700, the file is mode 0600,
/// and the temporary file is made afresh (`O_EXCL`: a leftover or a planted symlink is
/// removed, never written through).
pub(super) fn write(path: &Path, record: &TakeoverRecord) -> Result<(), TakeoverError> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| TakeoverError::StateWrite {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })?;
    crate::private_file::write(path, &json).map_err(|e| TakeoverError::StateWrite {
        path: e.path,
        source: e.source,
    })
}

/// Removes the record; a missing one is fine (restore is idempotent).
pub(super) fn remove(path: &Path) -> Result<(), TakeoverError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(TakeoverError::StateWrite {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_safe_names() {
        assert_eq!(file_safe("docker0"), "docker0");
        assert_eq!(file_safe("/proc/12/ns/net"), "proc_12_ns_net");
        assert_eq!(file_safe("a b"), "a_b");
        assert_eq!(file_safe("//"), "ns");
    }

    #[test]
    fn write_read_remove_round_trip() {
        let dir = std::env::temp_dir().join(format!("bwtk-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("x-br0.json");
        let rec = TakeoverRecord {
            version: STATE_VERSION,
            netns: "x".into(),
            bridge: "br0".into(),
            gateway: GatewayRecord {
                outer: "bwgw0".into(),
                inner: "bwgw1".into(),
                outer_index: Some(5),
                inner_index: None,
            },
            ports: vec![TakenPort {
                name: "veth1".into(),
                index: 7,
                hairpin: true,
            }],
        };
        assert!(read(&path).unwrap().is_none());
        write(&path, &rec).unwrap();
        assert_eq!(read(&path).unwrap(), Some(rec.clone()));
        // Private whatever the umask: the record says which links root will move and delete.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "the state file's mode");
        assert_eq!(mode(&dir), 0o700, "the state directory's mode");
        // A leftover temporary file (a crash mid-write) is replaced, not written through.
        let tmp = dir.join("x-br0.json.tmp");
        fs::write(&tmp, b"leftover").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        write(&path, &rec).unwrap();
        assert_eq!(mode(&path), 0o600, "rewritten over a 0666 leftover");
        assert!(!tmp.exists());
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            read(&path),
            Err(TakeoverError::StateCorrupt { .. })
        ));
        remove(&path).unwrap();
        remove(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
