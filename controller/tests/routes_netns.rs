//! The routing table read over rtnetlink, as reverse-path prefix sets, and the route watch,
//! on a network namespace this test creates (and always removes): veth pairs inside it stand
//! in for eth0/docker0 (this kernel has no dummy driver), routes are added with `ip -n NS`,
//! and nothing touches the root namespace or sends a packet. Needs root.
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use controller::netlink::{
    MAIN_TABLE, Netns, RouteEntry, RouteEvent, RouteKind, RouteReader, RouteWatch,
    reverse_path_prefixes,
};
use rules_wasm::model::Cidr;

/// How long a notification may take to arrive (it is queued before `ip` returns).
const EVENT_WAIT: Duration = Duration::from_secs(5);

/// A namespace with three veth pairs `dN`/`dNp` (N = 0, 1, 2), all up, with no IPv6
/// link-local addresses (so no `fe80::/64` routes appear on their own). Removed on drop,
/// also when the test fails.
struct Ns {
    netns: Netns,
    name: String,
}

impl Ns {
    fn create() -> Ns {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "bwrt-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let netns = Netns::create(&name).expect("creating a namespace (run as root)");
        let ns = Ns { netns, name };
        for d in ["d0", "d1", "d2"] {
            let peer = format!("{d}p");
            ns.ip(&["link", "add", d, "type", "veth", "peer", "name", &peer]);
            for dev in [d, peer.as_str()] {
                ns.ip(&["link", "set", dev, "addrgenmode", "none"]);
                ns.ip(&["link", "set", dev, "up"]);
            }
        }
        ns
    }

    /// Runs `ip -n NS ARGS`, panicking with its output if it fails.
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("ip (iproute2) runs");
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn cidr(s: &str) -> Cidr {
    let (ip, len) = s.split_once('/').unwrap();
    Cidr::new(ip.parse().unwrap(), len.parse().unwrap()).unwrap()
}

fn strings(cidrs: &[Cidr]) -> Vec<String> {
    cidrs.iter().map(Cidr::to_string).collect()
}

/// Whether `addr` (either family) is in one of `set`.
fn covers(set: &[Cidr], addr: &str) -> bool {
    let host = Cidr::host(addr.parse().unwrap());
    set.iter().any(|c| c.contains(&host.addr.to_be_bytes()))
}

/// Waits for the watch's next event, failing the test after [`EVENT_WAIT`].
async fn next_event(watch: &mut RouteWatch) -> RouteEvent {
    tokio::time::timeout(EVENT_WAIT, watch.changed())
        .await
        .expect("a route notification in time")
        .expect("the watch socket works")
}

#[tokio::test]
async fn routing_table_as_reverse_path_sets_and_watch() {
    let ns = Ns::create();
    // IPv4: default out of d0; 10/8 to d1 with 10.1/16 back to d0 and a blackhole in it; a
    // multipath route over d1 and d2; two metrics for one prefix; another table.
    for route in [
        "default dev d0",
        "10.0.0.0/8 dev d1",
        "10.1.0.0/16 dev d0",
        "blackhole 10.2.0.0/16",
        "198.51.100.0/24 nexthop dev d1 nexthop dev d2",
        "192.0.2.0/24 dev d1 metric 100",
        "192.0.2.0/24 dev d2 metric 50",
        "default dev d2 table 100",
    ] {
        let args: Vec<&str> = route.split(' ').collect();
        ns.ip(&[&["route", "add"][..], &args].concat());
    }
    // IPv6: default out of d0, a /48 to d1, an ECMP /48 over d1 and d2, and one prefix
    // appended on two links with the same metric (two routes, as the kernel makes itself for
    // fe80::/64 on every link).
    for route in [
        "add default dev d0",
        "add 2001:db8:1::/48 dev d1",
        "add 2001:db8:2::/48 nexthop via fe80::1 dev d1 nexthop via fe80::2 dev d2",
        "add 2001:db8:9::/48 dev d1",
        "append 2001:db8:9::/48 dev d2",
    ] {
        let args: Vec<&str> = route.split(' ').collect();
        ns.ip(&[&["-6", "route"][..], &args].concat());
    }

    // Subscribe before the first dump, as the controller must.
    let mut watch = RouteWatch::open(&ns.netns).await.unwrap();
    let reader = RouteReader::open(&ns.netns).await.unwrap();
    let rtnl = ns.netns.rtnl().await.unwrap();
    let d0 = rtnl.index_of("d0").await.unwrap();
    let d1 = rtnl.index_of("d1").await.unwrap();
    let d2 = rtnl.index_of("d2").await.unwrap();

    let routes = reader.routes().await.unwrap();
    assert!(routes.iter().all(|r| r.table == MAIN_TABLE), "{routes:#?}");
    let find = |prefix: &str| -> Vec<&RouteEntry> {
        routes.iter().filter(|r| r.prefix == cidr(prefix)).collect()
    };
    assert_eq!(find("0.0.0.0/0").len(), 1, "table 100's default left out");
    assert_eq!(find("0.0.0.0/0")[0].oifs, [d0]);
    assert_eq!(find("10.2.0.0/16")[0].kind, RouteKind::Blackhole);
    assert_eq!(find("198.51.100.0/24")[0].oifs, [d1, d2]);
    assert_eq!(find("2001:db8:2::/48")[0].oifs, [d1, d2]);
    assert_eq!(find("::/0")[0].metric, 1024);
    let metrics: Vec<(u32, Vec<u32>)> = find("192.0.2.0/24")
        .iter()
        .map(|r| (r.metric, r.oifs.clone()))
        .collect();
    assert!(metrics.contains(&(50, vec![d2])) && metrics.contains(&(100, vec![d1])));
    assert_eq!(routes.len(), 12, "no other routes: {routes:#?}");

    let d2_set = reverse_path_prefixes(&routes, d2);
    assert_eq!(
        strings(&d2_set),
        [
            "192.0.2.0/24",
            "198.51.100.0/24",
            "2001:db8:2::/48",
            "2001:db8:9::/48"
        ]
    );
    let d1_set = reverse_path_prefixes(&routes, d1);
    assert_eq!(
        strings(&d1_set),
        [
            "10.0.0.0/16",
            "10.3.0.0/16",
            "10.4.0.0/14",
            "10.8.0.0/13",
            "10.16.0.0/12",
            "10.32.0.0/11",
            "10.64.0.0/10",
            "10.128.0.0/9",
            "198.51.100.0/24",
            "2001:db8:1::/48",
            "2001:db8:2::/48",
            "2001:db8:9::/48",
        ]
    );
    let d0_set = reverse_path_prefixes(&routes, d0);
    for (addr, via_d0) in [
        ("8.8.8.8", true),
        ("10.1.2.3", true),
        ("10.0.0.1", false),
        ("10.2.0.1", false),
        ("192.0.2.1", false),
        ("198.51.100.7", false),
        ("203.0.113.1", true),
        ("2001:db8:1::1", false),
        ("2001:db8:9::1", false),
        ("2001:db8:3::1", true),
        ("::ffff:8.8.8.8", true),
        ("::ffff:10.0.0.1", false),
    ] {
        assert_eq!(covers(&d0_set, addr), via_d0, "{addr} via d0");
    }

    // A route added to another table says nothing; one added to main is seen, with its
    // interface, and the next dump reflects it.
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "dev",
        "d0",
        "table",
        "100",
    ]);
    ns.ip(&["route", "add", "203.0.113.0/24", "dev", "d2"]);
    let added = RouteEvent::Added(RouteEntry {
        prefix: cidr("203.0.113.0/24"),
        oifs: vec![d2],
        table: MAIN_TABLE,
        metric: 0,
        kind: RouteKind::Unicast,
    });
    assert_eq!(next_event(&mut watch).await, added);
    let routes = reader.routes().await.unwrap();
    let d2_set = reverse_path_prefixes(&routes, d2);
    assert!(covers(&d2_set, "203.0.113.9"), "{:?}", strings(&d2_set));
    assert!(!covers(&reverse_path_prefixes(&routes, d0), "203.0.113.9"));

    // Removal, and IPv6.
    ns.ip(&["route", "del", "203.0.113.0/24", "dev", "d2"]);
    match next_event(&mut watch).await {
        RouteEvent::Removed(r) => assert_eq!(r.prefix, cidr("203.0.113.0/24")),
        other => panic!("expected the removal, got {other:?}"),
    }
    ns.ip(&["-6", "route", "add", "2001:db8:3::/48", "dev", "d2"]);
    match next_event(&mut watch).await {
        RouteEvent::Added(r) => {
            assert_eq!((r.prefix, r.oifs), (cidr("2001:db8:3::/48"), vec![d2]));
        }
        other => panic!("expected the IPv6 route, got {other:?}"),
    }
    let routes = reader.routes().await.unwrap();
    assert!(covers(&reverse_path_prefixes(&routes, d2), "2001:db8:3::1"));

    // A burst: the first change wakes the caller, the rest is already queued.
    for net in ["203.0.113.0/26", "203.0.113.64/26", "203.0.113.128/26"] {
        ns.ip(&["route", "add", net, "dev", "d1"]);
    }
    let first = next_event(&mut watch).await;
    let rest = watch.pending().unwrap();
    assert!(matches!(first, RouteEvent::Added(_)), "{first:?}");
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert!(watch.pending().unwrap().is_empty());
}

/// More notifications than the socket's buffer holds, while nobody reads (the test's
/// runtime is single-threaded and blocked in `ip`): the watch says it lost some, so the
/// caller knows to re-read the table, and the very next change is seen although the old
/// socket's queue was never read empty (the kernel would have dropped it silently there).
#[tokio::test]
async fn watch_reports_an_overrun() {
    let ns = Ns::create();
    let mut watch = RouteWatch::open(&ns.netns).await.unwrap();
    // The watch asks for 4 MiB, which the kernel doubles and caps at twice rmem_max; even
    // a small notification takes a few hundred bytes of it.
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(4 << 20);
    let count = 2 * rmem_max.min(4 << 20) / 256;
    let batch: String = (0..count)
        .map(|i| format!("route add 10.{}.{}.0/24 dev d1\n", i >> 8, i & 0xff))
        .collect();
    let file = std::env::temp_dir().join(format!("{}.batch", ns.name));
    std::fs::write(&file, batch).unwrap();
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-batch"])
        .arg(&file)
        .output()
        .expect("ip (iproute2) runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut seen = 0;
    loop {
        match next_event(&mut watch).await {
            RouteEvent::Overrun => break,
            RouteEvent::Added(_) => seen += 1,
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            seen < count,
            "all {count} notifications fit: no overrun to see"
        );
    }
    // The table as the caller would re-read it now holds every route of the batch.
    let reader = RouteReader::open(&ns.netns).await.unwrap();
    let routes = reader.routes().await.unwrap();
    assert_eq!(routes.len(), count, "every batch route in the dump");
    ns.ip(&["route", "add", "192.0.2.0/24", "dev", "d2"]);
    match next_event(&mut watch).await {
        RouteEvent::Added(r) => assert_eq!(r.prefix, cidr("192.0.2.0/24")),
        other => panic!("expected the new route, got {other:?}"),
    }
}
