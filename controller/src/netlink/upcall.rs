//! The upcall veth pair of the tiered datapath: the tc program on a container's host-side
//! veth redirects every frame it does not forward in the kernel ("upcalls" it, with a 14-byte
//! tag in front) to the egress of the pair's `t` end; the frames come out of the `r` end,
//! where the XDP program and the AF_XDP socket of the userspace engine read them.
//!
//! Built for that job:
//! - MTU [`UPCALL_MTU`] on both ends: a tagged frame is 14 bytes longer than the container's
//!   1500-byte-MTU frame, and the native XDP program on `r` caps its peer's MTU at 3506.
//! - A real queue on `t` (txqueuelen [`UPCALL_TXQUEUELEN`] and a root [`UPCALL_QDISC`]): a
//!   veth defaults to `noqueue`, and its 256-frame ring then drops when the engine falls
//!   behind; under a qdisc the veth stops its queue instead (backpressure) and whatever the
//!   qdisc has to drop is counted ([`UpcallPair::drops`]).
//!
//! Names are `<name>t` and `<name>r`; callers pass a prefix plus a short unique suffix so a
//! restart after a crash can find and remove leftovers ([`UpcallPair::remove_stale`]).
use super::link::{LinkCounters, QdiscStats};
use super::{NetlinkError, Rtnl, VethPeer};

/// MTU of both ends: the data room of a 2 KiB UMEM frame (2048 − 256 bytes of headroom −
/// the 14-byte Ethernet header), what the AF_XDP socket on the `r` end can hold. A tagged
/// frame of a 1500-byte-MTU container (1,528 bytes) fits; a bigger one could not be
/// received anyway.
pub const UPCALL_MTU: u32 = 1778;

/// Transmit queue length of the `t` end: the limit of its fifo qdisc, in packets.
pub const UPCALL_TXQUEUELEN: u32 = 1000;

/// The root qdisc of the `t` end (limit = txqueuelen packets, drops counted).
pub const UPCALL_QDISC: &str = "pfifo";

/// Longest interface name the kernel accepts (`IFNAMSIZ` − 1).
const IFNAME_MAX: usize = 15;

/// The upcall veth pair: `t` (where upcalls are redirected to, with a queue) and `r` (where
/// the engine's XDP program and AF_XDP socket read them). Not removed on drop — netlink is
/// async — so call [`UpcallPair::delete`]; [`UpcallPair::remove_stale`] cleans up after a
/// crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpcallPair {
    tx_ifname: String,
    tx_ifindex: u32,
    rx_ifname: String,
    rx_ifindex: u32,
}

/// What the upcall path dropped before the engine saw it: the `t` end's qdisc and device
/// counters, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpcallDrops {
    /// The `t` end's root qdisc (kind, drops, backlog, requeues); `None` if it has none.
    pub qdisc: Option<QdiscStats>,
    /// The `t` end's device counters (`tx_dropped`: frames the veth itself dropped).
    pub tx_link: LinkCounters,
    /// The `r` end's device counters (`rx_dropped` there: frames the `r` side refused).
    pub rx_link: LinkCounters,
}

impl UpcallDrops {
    /// Every drop counted on the path: qdisc drops plus the veth's own drops on both ends.
    pub fn total(&self) -> u64 {
        self.qdisc.as_ref().map_or(0, |q| q.drops)
            + self.tx_link.tx_dropped
            + self.rx_link.rx_dropped
    }
}

impl UpcallPair {
    /// Creates the pair `<name>t` / `<name>r` in `rtnl`'s namespace: MTU [`UPCALL_MTU`] on
    /// both, txqueuelen [`UPCALL_TXQUEUELEN`] and a root [`UPCALL_QDISC`] on `t`, both up.
    /// `name` must leave room for the suffix (at most 14 characters). If a step fails, the
    /// pair is removed again before the error is returned.
    pub async fn create(rtnl: &Rtnl, name: &str) -> Result<UpcallPair, NetlinkError> {
        check_name(name)?;
        let tx_ifname = format!("{name}t");
        let rx_ifname = format!("{name}r");
        let tx_ifindex = rtnl
            .add_veth(
                &tx_ifname,
                VethPeer {
                    name: &rx_ifname,
                    netns: None,
                    mac: None,
                    mtu: Some(UPCALL_MTU),
                },
            )
            .await?;
        let configured = async {
            let rx_ifindex = rtnl.index_of(&rx_ifname).await?;
            // No IPv6 on the pair: the kernel would send router solicitations, MLD
            // reports and DAD probes through it, frames the engine can only discard. (The
            // caller's thread is in the pair's namespace, whose sysctls these are; a kernel
            // without IPv6 has no such key, which is as good.)
            for ifname in [&tx_ifname, &rx_ifname] {
                let key = format!("net/ipv6/conf/{ifname}/disable_ipv6");
                match super::set_net_sysctl(&key, "1") {
                    Err(NetlinkError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
            rtnl.set_txqueuelen(tx_ifindex, UPCALL_TXQUEUELEN).await?;
            rtnl.set_up(rx_ifindex).await?;
            rtnl.set_up(tx_ifindex).await?;
            // After txqueuelen (the fifo's limit is read at creation) and after up (so the
            // kernel's default-qdisc attach on up has nothing left to do).
            rtnl.replace_root_qdisc(tx_ifindex, UPCALL_QDISC).await?;
            Ok::<u32, NetlinkError>(rx_ifindex)
        }
        .await;
        match configured {
            Ok(rx_ifindex) => {
                tracing::debug!(
                    tx = %tx_ifname,
                    rx = %rx_ifname,
                    netns = rtnl.netns_label(),
                    "upcall pair created"
                );
                Ok(UpcallPair {
                    tx_ifname,
                    tx_ifindex,
                    rx_ifname,
                    rx_ifindex,
                })
            }
            Err(e) => {
                if let Err(cleanup) = rtnl.delete_link(tx_ifindex).await {
                    tracing::warn!(
                        "removing the half-made upcall pair {tx_ifname}/{rx_ifname}: {cleanup}"
                    );
                }
                Err(e)
            }
        }
    }

    /// Name of the `t` end: where the tc program redirects upcalls (its egress).
    pub fn tx_ifname(&self) -> &str {
        &self.tx_ifname
    }

    /// Index of the `t` end: the target of the tc program's `bpf_redirect`.
    pub fn tx_ifindex(&self) -> u32 {
        self.tx_ifindex
    }

    /// Name of the `r` end: where the engine's XDP program and AF_XDP socket go.
    pub fn rx_ifname(&self) -> &str {
        &self.rx_ifname
    }

    /// Index of the `r` end.
    pub fn rx_ifindex(&self) -> u32 {
        self.rx_ifindex
    }

    /// Deletes the pair (deleting one end of a veth removes both). A pair already gone
    /// counts as deleted.
    pub async fn delete(self, rtnl: &Rtnl) -> Result<(), NetlinkError> {
        match rtnl.delete_link(self.tx_ifindex).await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The drop counters of the upcall path (qdisc of `t`, both ends' device counters).
    pub async fn drops(&self, rtnl: &Rtnl) -> Result<UpcallDrops, NetlinkError> {
        Ok(UpcallDrops {
            qdisc: rtnl.root_qdisc(self.tx_ifindex).await?,
            tx_link: rtnl.link_counters(self.tx_ifindex).await?,
            rx_link: rtnl.link_counters(self.rx_ifindex).await?,
        })
    }

    /// Deletes every veth in `rtnl`'s namespace whose name starts with `prefix` (leftover
    /// upcall pairs of a process that crashed) and returns how many pairs it removed (it
    /// deletes one end of each, the other goes with it; the names are logged). An empty
    /// prefix is refused: it would match every veth.
    pub async fn remove_stale(rtnl: &Rtnl, prefix: &str) -> Result<usize, NetlinkError> {
        if prefix.is_empty() {
            return Err(NetlinkError::Unexpected {
                op: format!("removing stale upcall pairs in {}", rtnl.netns_label()),
                msg: "the prefix is empty: it would match every veth".into(),
            });
        }
        let mut removed = Vec::new();
        for link in rtnl.links().await? {
            if !link.name.starts_with(prefix) || link.kind.as_deref() != Some("veth") {
                continue;
            }
            match rtnl.delete_link(link.index).await {
                Ok(()) => removed.push(link.name),
                // Its peer, deleted a moment ago, took it along.
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if !removed.is_empty() {
            tracing::info!(?removed, prefix, "removed stale upcall pairs");
        }
        Ok(removed.len())
    }
}

/// Refuses names that would make an invalid or overlong interface name with the suffix.
fn check_name(name: &str) -> Result<(), NetlinkError> {
    let bad = if name.is_empty() {
        Some("it is empty")
    } else if name.len() + 1 > IFNAME_MAX {
        Some("with the 1-character suffix it exceeds 15 bytes (IFNAMSIZ)")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("it contains '/', ':', whitespace or control characters")
    } else {
        None
    };
    match bad {
        Some(why) => Err(NetlinkError::Unexpected {
            op: format!("creating upcall pair {name:?}"),
            msg: format!("not a usable interface name prefix: {why}"),
        }),
        None => Ok(()),
    }
}

/// Whether an error means the link no longer exists.
fn is_gone(err: &NetlinkError) -> bool {
    match err {
        NetlinkError::NoSuchLink { .. } => true,
        NetlinkError::Io { source, .. } => source.raw_os_error() == Some(libc::ENODEV),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::netlink::Netns;

    static NEXT: AtomicU32 = AtomicU32::new(0);

    /// A namespace of this test process, removed on drop (also when the test fails).
    fn test_netns(tag: &str) -> Netns {
        let name = format!(
            "bwt-up-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Netns::create(&name).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// `tc args…` inside the namespace (tests may shell out; the product never does).
    fn tc_in(ns: &Netns, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns.label(), "tc"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn upcall_names_are_checked() {
        assert!(check_name("bwup0abc").is_ok());
        assert!(check_name("bwup0abcdefghi").is_ok()); // 14 + suffix = 15
        assert!(check_name("bwup0abcdefghij").is_err()); // 15 + suffix = 16
        assert!(check_name("").is_err());
        assert!(check_name("bw/up").is_err());
        assert!(check_name("bw up").is_err());
    }

    /// The pair exists with its MTU, txqueuelen and qdisc, both ends up; counters read;
    /// delete removes both ends; remove_stale removes leftovers and nothing else.
    #[test]
    fn root_netns_upcall_pair_lifecycle() {
        let ns = test_netns("pair");
        let rt = runtime();
        rt.block_on(async {
            let rtnl = ns.rtnl().await.unwrap();
            let pair = UpcallPair::create(&rtnl, "bwup0a1").await.unwrap();
            assert_eq!(pair.tx_ifname(), "bwup0a1t");
            assert_eq!(pair.rx_ifname(), "bwup0a1r");
            let t = rtnl.link_by_name("bwup0a1t").await.unwrap();
            let r = rtnl.link_by_name("bwup0a1r").await.unwrap();
            assert_eq!(t.index, pair.tx_ifindex());
            assert_eq!(r.index, pair.rx_ifindex());
            for l in [&t, &r] {
                assert_eq!(l.mtu, Some(UPCALL_MTU), "{}", l.name);
                assert!(l.up, "{} is up", l.name);
                assert_eq!(l.kind.as_deref(), Some("veth"));
            }
            assert_eq!(t.link, Some(r.index), "t and r are peers");

            // The qdisc, through our netlink reader and through tc itself.
            let q = rtnl.root_qdisc(pair.tx_ifindex()).await.unwrap().unwrap();
            assert_eq!(q.kind, UPCALL_QDISC);
            assert_eq!(q.drops, 0);
            let shown = tc_in(&ns, &["qdisc", "show", "dev", "bwup0a1t"]);
            assert!(
                shown.contains("qdisc pfifo")
                    && shown.contains("root")
                    && shown.contains("limit 1000p"),
                "tc qdisc show: {shown}"
            );
            let r_q = rtnl.root_qdisc(pair.rx_ifindex()).await.unwrap();
            assert!(
                r_q.as_ref().is_none_or(|q| q.kind == "noqueue"),
                "r keeps the default: {r_q:?}"
            );
            let link = Command::new("ip")
                .args(["-n", ns.label(), "link", "show", "dev", "bwup0a1t"])
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&link.stdout).contains("qlen 1000"),
                "{}",
                String::from_utf8_lossy(&link.stdout)
            );

            // Counters read (and nothing was dropped on an idle pair).
            let drops = pair.drops(&rtnl).await.unwrap();
            assert_eq!(drops.total(), 0, "{drops:?}");
            assert_eq!(drops.qdisc.as_ref().map(|q| q.kind.as_str()), Some("pfifo"));

            // A second pair with the same name is refused and leaves the first intact.
            assert!(UpcallPair::create(&rtnl, "bwup0a1").await.is_err());
            assert!(rtnl.link_by_name("bwup0a1t").await.is_ok());

            pair.delete(&rtnl).await.unwrap();
            for name in ["bwup0a1t", "bwup0a1r"] {
                assert!(matches!(
                    rtnl.link_by_name(name).await,
                    Err(NetlinkError::NoSuchLink { .. })
                ));
            }

            // Leftovers of a "crash": two pairs with the prefix, one unrelated veth.
            let a = UpcallPair::create(&rtnl, "bwupS1").await.unwrap();
            let b = UpcallPair::create(&rtnl, "bwupS2").await.unwrap();
            rtnl.add_veth(
                "keep0",
                VethPeer {
                    name: "keep1",
                    netns: None,
                    mac: None,
                    mtu: None,
                },
            )
            .await
            .unwrap();
            assert!(UpcallPair::remove_stale(&rtnl, "").await.is_err());
            let removed = UpcallPair::remove_stale(&rtnl, "bwupS").await.unwrap();
            assert_eq!(removed, 2, "two pairs");
            for name in [a.tx_ifname(), a.rx_ifname(), b.tx_ifname(), b.rx_ifname()] {
                assert!(rtnl.link_by_name(name).await.is_err(), "{name} is gone");
            }
            assert!(rtnl.link_by_name("keep0").await.is_ok());
            // Deleting an already removed pair is fine.
            a.delete(&rtnl).await.unwrap();
            let again = UpcallPair::remove_stale(&rtnl, "bwupS").await.unwrap();
            assert_eq!(again, 0);
        });
    }
}
