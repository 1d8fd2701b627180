//! The host's routing table as reverse-path prefix sets, and a follower that says when it
//! changes.
//!
//! A user's `-i eth0` means, in bridgewall, "arrived through the bridge gateway with a source
//! address the host would route out through eth0" (a reverse-path check, as the kernel's
//! strict `rp_filter` does). Answering that needs three pieces, all here:
//!
//! - [`RouteReader::routes`] dumps the main routing table of a namespace, both families, as
//!   [`RouteEntry`]s;
//! - [`reverse_path_prefixes`] turns those into the exact set of source addresses whose
//!   longest-prefix-match route leaves through a given interface, as a minimal list of
//!   disjoint [`Cidr`]s, ready for the rule compiler;
//! - [`RouteWatch`] follows `RTNLGRP_IPV4_ROUTE` and `RTNLGRP_IPV6_ROUTE`, so the controller
//!   knows when to dump and recompile again.
//!
//! Policy routing (`ip rule`, tables other than main) is out of scope: with it the answer
//! would depend on more than the source address (marks, input interface, TOS), which a prefix
//! set cannot express. Docker does not use it; a host that does gets the main table's view.
//! For the same reason the local table is not consulted: a packet claiming one of the host's
//! own addresses as its source counts for whichever interface the main table routes that
//! address through.
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::{MulticastGroup, RouteMessageBuilder};
use rules_wasm::model::Cidr;

use super::{NetlinkError, Netns};

/// The kernel's main routing table (`RT_TABLE_MAIN`), the only one read here.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Receive buffer asked for the watch socket: a burst of route changes (a routing daemon
/// loading a table) should fit without an overrun. The kernel caps it at `rmem_max`.
const WATCH_RCVBUF: libc::c_int = 4 << 20;

/// What a route does with the packets it matches: the kinds that matter to a reverse-path
/// answer.
///
/// Unicast routes say which interface a source is reached through. The refusing kinds route
/// nothing out, but are kept: they are the longest match for their prefix, so they take it
/// away from a less specific route (a blackhole for 10.2.0.0/16 inside a default route via
/// eth0 means 10.2.x.x is not "from eth0"). Local, broadcast, anycast, multicast and NAT
/// routes are left out by [`RouteEntry::from_message`]: they describe the host's own
/// addresses or multicast delivery, never a source reached through an interface, and live
/// in the local table anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// `RTN_UNICAST`: sends matching packets out of its nexthops' interfaces.
    Unicast,
    /// `RTN_BLACKHOLE`: drops silently.
    Blackhole,
    /// `RTN_UNREACHABLE`: refuses (host unreachable).
    Unreachable,
    /// `RTN_PROHIBIT`: refuses (administratively prohibited).
    Prohibit,
    /// `RTN_THROW`: ends the lookup in this table (the next `ip rule` would decide; with
    /// policy routing out of scope it routes nothing).
    Throw,
}

impl RouteKind {
    /// The kind of a route message's type, `None` for the types left out (see the enum).
    fn from_type(kind: RouteType) -> Option<RouteKind> {
        match kind {
            RouteType::Unicast => Some(RouteKind::Unicast),
            RouteType::BlackHole => Some(RouteKind::Blackhole),
            RouteType::Unreachable => Some(RouteKind::Unreachable),
            RouteType::Prohibit => Some(RouteKind::Prohibit),
            RouteType::Throw => Some(RouteKind::Throw),
            _ => None,
        }
    }
}

/// One route of a routing table, reduced to what a reverse-path answer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// The destination prefix, in the rule model's 16-byte space: an IPv4 route's prefix is
    /// IPv4-mapped (so [`Cidr::is_v4`] tells the families apart).
    pub prefix: Cidr,
    /// Output interfaces (ifindex): one for a plain route, every nexthop's for a multipath
    /// route; sorted, no duplicates. Empty for the refusing kinds, and for a unicast route
    /// whose nexthop is a nexthop object the kernel did not expand (`nexthop_compat_mode`
    /// off), which then counts as routing nowhere known.
    pub oifs: Vec<u32>,
    /// The routing table it is in (always [`MAIN_TABLE`] from [`RouteReader::routes`]).
    pub table: u32,
    /// The route's metric (`RTA_PRIORITY`, 0 when absent): among routes for the same prefix
    /// the lowest wins.
    pub metric: u32,
    /// What the route does.
    pub kind: RouteKind,
}

impl RouteEntry {
    /// Reads a route message (from a dump or a notification), or `None` for routes that say
    /// nothing about which interface a source address is reached through:
    ///
    /// - local, broadcast, anycast, multicast and NAT routes (see [`RouteKind`]);
    /// - cached clones (`RTM_F_CLONED`), which are not part of the table;
    /// - routes that apply to some packets only — an IPv4 TOS, an IPv6 source prefix — as
    ///   those are policy routing in another form;
    /// - IPv6 routes inside `::ffff:0:0/96`: in the rule model that range *is* IPv4, and an
    ///   IPv6 route there would claim IPv4 sources.
    ///
    /// Any table is accepted; filtering is the caller's choice.
    pub fn from_message(msg: &RouteMessage) -> Option<RouteEntry> {
        let header = &msg.header;
        let kind = RouteKind::from_type(header.kind)?;
        if header.flags.contains(RouteFlags::Cloned)
            || header.tos != 0
            || header.source_prefix_length != 0
        {
            return None;
        }
        let prefix = destination(msg)?;
        let mut entry = RouteEntry {
            prefix,
            oifs: Vec::new(),
            table: u32::from(header.table),
            metric: 0,
            kind,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => entry.table = *t,
                RouteAttribute::Priority(p) => entry.metric = *p,
                RouteAttribute::Oif(i) if kind == RouteKind::Unicast => entry.oifs.push(*i),
                RouteAttribute::MultiPath(hops) if kind == RouteKind::Unicast => {
                    entry.oifs.extend(hops.iter().map(|h| h.interface_index))
                }
                _ => {}
            }
        }
        entry.oifs.retain(|&i| i != 0);
        entry.oifs.sort_unstable();
        entry.oifs.dedup();
        Some(entry)
    }

    /// Whether this route sends what it matches out through `ifindex`: the question
    /// [`reverse_path_prefixes`] asks of each winning route.
    pub fn routes_via(&self, ifindex: u32) -> bool {
        self.kind == RouteKind::Unicast && self.oifs.contains(&ifindex)
    }
}

/// The destination prefix of a route message (no `RTA_DST` means the default route), or
/// `None` for a family other than IPv4/IPv6 or an IPv6 prefix inside `::ffff:0:0/96`.
fn destination(msg: &RouteMessage) -> Option<Cidr> {
    let dst = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(addr) => Some(addr),
        _ => None,
    });
    let len = msg.header.destination_prefix_length;
    match (msg.header.address_family, dst) {
        (AddressFamily::Inet, None) => Cidr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), len),
        (AddressFamily::Inet6, None) => Cidr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), len),
        (AddressFamily::Inet, Some(RouteAddress::Inet(v4))) => Cidr::new(IpAddr::V4(*v4), len),
        (AddressFamily::Inet6, Some(RouteAddress::Inet6(v6))) => {
            Cidr::new(IpAddr::V6(*v6), len).filter(|c| !c.is_v4())
        }
        _ => None,
    }
}

/// Reads the main routing table of one namespace over an rtnetlink socket of its own.
///
/// A handle of its own rather than a method on [`super::Rtnl`], whose netlink handle is
/// private to its module; the socket costs nothing while idle.
#[derive(Clone, Debug)]
pub struct RouteReader {
    handle: rtnetlink::Handle,
    netns: String,
}

impl RouteReader {
    /// Opens a reader on `netns` (the socket is created inside it, and stays there). Needs a
    /// Tokio runtime: the connection task is spawned on it and ends with the last clone.
    pub async fn open(netns: &Netns) -> Result<RouteReader, NetlinkError> {
        let op = format!("opening rtnetlink in netns {}", netns.label());
        let runtime = current_runtime(&op)?;
        let (conn, handle) = in_netns(netns, &runtime, &op, || {
            rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle))
        })?;
        runtime.spawn(conn);
        Ok(RouteReader {
            handle,
            netns: netns.label().to_string(),
        })
    }

    /// Opens a reader on the calling process's own namespace.
    pub async fn current() -> Result<RouteReader, NetlinkError> {
        RouteReader::open(&Netns::current()?).await
    }

    /// The IPv4 and IPv6 routes of the main table that [`RouteEntry::from_message`] keeps:
    /// unicast routes with their output interfaces (every nexthop's, for multipath), and the
    /// refusing kinds (blackhole, unreachable, prohibit, throw), which route nothing out but
    /// shadow less specific routes. Only the main table: policy routing is out of scope (see
    /// the module's documentation).
    pub async fn routes(&self) -> Result<Vec<RouteEntry>, NetlinkError> {
        let mut routes = self
            .dump(RouteMessageBuilder::<Ipv4Addr>::new().build(), "IPv4")
            .await?;
        routes.extend(
            self.dump(RouteMessageBuilder::<Ipv6Addr>::new().build(), "IPv6")
                .await?,
        );
        Ok(routes)
    }

    /// Dumps one family. Without `NETLINK_GET_STRICT_CHK` the kernel ignores the table asked
    /// for and sends every table, so the main table is picked here.
    async fn dump(&self, req: RouteMessage, family: &str) -> Result<Vec<RouteEntry>, NetlinkError> {
        let op = format!("listing {family} routes in {}", self.netns);
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::rtnl(&op, e))?;
        Ok(msgs
            .iter()
            .filter_map(RouteEntry::from_message)
            .filter(|r| r.table == MAIN_TABLE)
            .collect())
    }
}

/// The Tokio runtime we are called from, which the netlink sockets register with and their
/// connection tasks run on.
fn current_runtime(op: &str) -> Result<tokio::runtime::Handle, NetlinkError> {
    tokio::runtime::Handle::try_current().map_err(|e| NetlinkError::Unexpected {
        op: op.to_string(),
        msg: e.to_string(),
    })
}

/// Runs `open` on a thread inside `netns` with `runtime` entered, so the netlink socket it
/// creates lives in that namespace and registers with that runtime.
fn in_netns<T, F>(
    netns: &Netns,
    runtime: &tokio::runtime::Handle,
    op: &str,
    open: F,
) -> Result<T, NetlinkError>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let runtime = runtime.clone();
    netns
        .run(move || {
            let _guard = runtime.enter();
            open()
        })?
        .map_err(|e| NetlinkError::io(op, e))
}

/// The set of source addresses whose longest-prefix-match route in `routes` leaves through
/// `ifindex`, as a sorted, minimal list of disjoint prefixes: what `-i IFACE` means for a
/// packet that came in through the bridge gateway.
///
/// - For each prefix the route with the lowest metric wins; winners with equal metrics (a
///   multipath route, or routes appended with the same metric) all count, so an address
///   counts for every interface any of them uses — a superset of the kernel's choice, which
///   for appended IPv4 routes takes the first.
/// - Refusing routes (blackhole, unreachable...) win their prefix like any other and route
///   nothing out; an address no route covers routes nowhere.
/// - The families stay apart: IPv4 prefixes come only from IPv4 routes (those whose prefix
///   [`Cidr::is_v4`]), IPv6 prefixes only from IPv6 routes and never inside
///   `::ffff:0:0/96`; no output prefix straddles that boundary, so a consumer may split the
///   list by family with [`Cidr::is_v4`].
///
/// The walk is over the sorted prefixes, splitting address ranges in halves only where a
/// route begins: O(n·w log n) for n routes of width w, never per address.
pub fn reverse_path_prefixes(routes: &[RouteEntry], ifindex: u32) -> Vec<Cidr> {
    let (v4, mut v6) = winners(routes, ifindex);
    let mut out = Vec::new();
    cover_root(V4_SPACE, &v4, &mut out);
    // The IPv4-mapped range routes nowhere in IPv6 terms: a more specific "route" to nothing.
    v6.push((V4_SPACE, false));
    v6.sort_unstable();
    cover_root(V6_SPACE, &v6, &mut out);
    out.sort_unstable();
    out
}

/// `::ffff:0:0/96`, IPv4's whole space in the rule model.
const V4_SPACE: Cidr = Cidr {
    addr: 0xffff_0000_0000,
    len: 96,
};

/// `::/0`.
const V6_SPACE: Cidr = Cidr { addr: 0, len: 0 };

/// A prefix and whether its winning route leaves through the interface asked about.
type Verdict = (Cidr, bool);

/// The winning route of every prefix, reduced to "does it leave through `ifindex`", split
/// into IPv4 and IPv6 and sorted by (address, length).
fn winners(routes: &[RouteEntry], ifindex: u32) -> (Vec<Verdict>, Vec<Verdict>) {
    let mut best: HashMap<Cidr, (u32, bool)> = HashMap::with_capacity(routes.len());
    for r in routes {
        let via = r.routes_via(ifindex);
        best.entry(r.prefix)
            .and_modify(|(metric, hit)| {
                if r.metric < *metric {
                    *metric = r.metric;
                    *hit = via;
                } else if r.metric == *metric {
                    *hit |= via;
                }
            })
            .or_insert((r.metric, via));
    }
    let (mut v4, mut v6): (Vec<_>, Vec<_>) = best
        .into_iter()
        .map(|(prefix, (_, hit))| (prefix, hit))
        .partition(|(prefix, _)| prefix.is_v4());
    v4.sort_unstable();
    v6.sort_unstable();
    (v4, v6)
}

/// Covers one family's space `root`: `routes` are sorted and all inside `root` (possibly
/// equal to it); addresses no route covers route nowhere.
fn cover_root(root: Cidr, routes: &[Verdict], out: &mut Vec<Cidr>) {
    if cover_prefix(root, false, routes, out) == Some(true) {
        out.push(root);
    }
}

/// Covers `range`: a route for exactly `range` (first in the sorted slice, if any) decides
/// for it instead of the `inherited` verdict; the rest are strictly inside.
fn cover_prefix(
    range: Cidr,
    inherited: bool,
    routes: &[Verdict],
    out: &mut Vec<Cidr>,
) -> Option<bool> {
    match routes.split_first() {
        Some((&(prefix, via), inside)) if prefix == range => cover_inside(range, via, inside, out),
        _ => cover_inside(range, inherited, routes, out),
    }
}

/// Covers `range` whose own verdict is `verdict`, with `routes` strictly inside it. Returns
/// `Some(v)` when the whole range has the same verdict `v` (nothing pushed: the caller may
/// merge it with its sibling), or `None` when the range is mixed and its selected parts
/// have been pushed to `out`.
fn cover_inside(
    range: Cidr,
    verdict: bool,
    routes: &[Verdict],
    out: &mut Vec<Cidr>,
) -> Option<bool> {
    if routes.is_empty() {
        return Some(verdict);
    }
    // Routes are strictly inside, so range.len < 128 and each lies in exactly one half.
    let (lo, hi) = halves(range);
    let split = routes.partition_point(|(p, _)| p.addr < hi.addr);
    let lo_cover = cover_prefix(lo, verdict, &routes[..split], out);
    let hi_cover = cover_prefix(hi, verdict, &routes[split..], out);
    match (lo_cover, hi_cover) {
        (Some(a), Some(b)) if a == b => Some(a),
        _ => {
            for (half, cover) in [(lo, lo_cover), (hi, hi_cover)] {
                if cover == Some(true) {
                    out.push(half);
                }
            }
            None
        }
    }
}

/// The two halves of a prefix shorter than 128 bits.
fn halves(range: Cidr) -> (Cidr, Cidr) {
    let len = range.len + 1;
    let lo = Cidr {
        addr: range.addr,
        len,
    };
    let hi = Cidr {
        addr: range.addr | (1u128 << (128 - u32::from(len))),
        len,
    };
    (lo, hi)
}

/// What a [`RouteWatch`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteEvent {
    /// A route was added to (or replaced in) the main table. A replacement does not say what
    /// it replaced: re-read the table rather than patching a copy.
    Added(RouteEntry),
    /// A route was removed from the main table.
    Removed(RouteEntry),
    /// The socket's receive buffer overflowed and notifications were lost: re-read the
    /// table. The watch has already moved to a fresh socket when it says so (see
    /// [`RouteWatch`]), so a table read after this event misses nothing.
    Overrun,
}

/// Follows route changes in one namespace: a netlink socket subscribed to
/// `RTNLGRP_IPV4_ROUTE` and `RTNLGRP_IPV6_ROUTE`, so the controller can recompute its
/// reverse-path sets and recompile the rules when the host's routing changes.
///
/// Every change is reported one by one; coalescing a burst (a routing daemon installing a
/// table sends thousands) is the caller's job: after [`RouteWatch::changed`] returns, wait a
/// little, take what else arrived with [`RouteWatch::pending`], then read the table once.
/// Open the watch before the first [`RouteReader::routes`], so no change falls between the
/// dump and the subscription.
///
/// After an overrun the kernel keeps dropping notifications for that socket, without a
/// further error, until its queue has been read empty; a table read in that window could
/// miss a change for good. So on an overrun the watch subscribes again on a new socket and
/// drops the old one (with whatever stale notifications it still held) before reporting
/// [`RouteEvent::Overrun`].
pub struct RouteWatch {
    sub: Subscription,
    /// A non-owning handle on the namespace, to subscribe again after an overrun.
    netns: Netns,
    runtime: tokio::runtime::Handle,
}

/// One subscribed socket: its notifications, and the connection task reading it.
struct Subscription {
    messages: BoxStream<'static, (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    /// Stopped on drop, which closes the socket (the task would otherwise linger until the
    /// next notification showed it that nobody listens).
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for RouteWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteWatch")
            .field("netns", &self.netns.label())
            .finish_non_exhaustive()
    }
}

impl RouteWatch {
    /// Subscribes to route changes in `netns` (the socket is created inside it). Needs a Tokio
    /// runtime, on which the connection task is spawned.
    pub async fn open(netns: &Netns) -> Result<RouteWatch, NetlinkError> {
        let op = format!("watching routes in netns {}", netns.label());
        let runtime = current_runtime(&op)?;
        let netns = netns.try_clone()?;
        let sub = subscribe(&netns, &runtime)?;
        Ok(RouteWatch {
            sub,
            netns,
            runtime,
        })
    }

    /// Subscribes to route changes in the calling process's own namespace.
    pub async fn current() -> Result<RouteWatch, NetlinkError> {
        RouteWatch::open(&Netns::current()?).await
    }

    /// Waits for the next change to the main table (or an overrun). Changes to other tables
    /// and to routes [`RouteEntry::from_message`] leaves out (local, broadcast...) are
    /// skipped. An error means the socket is gone, or could not be replaced after an
    /// overrun; open a new watch and re-read the table.
    pub async fn changed(&mut self) -> Result<RouteEvent, NetlinkError> {
        while let Some((msg, _)) = self.sub.messages.next().await {
            if let Some(event) = self.event(msg)? {
                return Ok(event);
            }
        }
        Err(NetlinkError::Unexpected {
            op: format!("watching routes in {}", self.netns.label()),
            msg: "the netlink connection closed".into(),
        })
    }

    /// The changes already received, without waiting: for coalescing a burst after
    /// [`RouteWatch::changed`] returned. Fails only when an overrun among them could not be
    /// followed by a new subscription.
    pub fn pending(&mut self) -> Result<Vec<RouteEvent>, NetlinkError> {
        let mut events = Vec::new();
        while let Some(Some((msg, _))) = self.sub.messages.next().now_or_never() {
            events.extend(self.event(msg)?);
        }
        Ok(events)
    }

    /// The event a notification means; an overrun moves the watch to a new socket first.
    fn event(
        &mut self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<Option<RouteEvent>, NetlinkError> {
        let event = event_of(msg);
        if event == Some(RouteEvent::Overrun) {
            tracing::warn!(
                "route notifications lost in {} (socket buffer full): subscribing again",
                self.netns.label()
            );
            // The new socket listens before the old one (and its stale queue) goes.
            self.sub = subscribe(&self.netns, &self.runtime)?;
        }
        Ok(event)
    }
}

/// Opens a socket in `netns` subscribed to both families' route groups, with a receive
/// buffer as large as the kernel allows up to [`WATCH_RCVBUF`].
fn subscribe(
    netns: &Netns,
    runtime: &tokio::runtime::Handle,
) -> Result<Subscription, NetlinkError> {
    let op = format!("watching routes in netns {}", netns.label());
    let (mut conn, _handle, messages) = in_netns(netns, runtime, &op, || {
        rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route])
    })?;
    // Best effort: the kernel silently caps it at rmem_max, and an overrun is handled anyway.
    if let Err(e) = conn.socket_mut().socket_mut().set_rx_buf_sz(WATCH_RCVBUF) {
        tracing::debug!("{op}: could not enlarge the receive buffer: {e}");
    }
    Ok(Subscription {
        messages: messages.boxed(),
        task: runtime.spawn(conn),
    })
}

/// The event a notification means, if it concerns the main table.
fn event_of(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<RouteEvent> {
    let main = |m: &RouteMessage| RouteEntry::from_message(m).filter(|r| r.table == MAIN_TABLE);
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)) => {
            main(&m).map(RouteEvent::Added)
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(m)) => {
            main(&m).map(RouteEvent::Removed)
        }
        NetlinkPayload::Overrun(_) => Some(RouteEvent::Overrun),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::RouteNextHopBuilder;

    const ETH0: u32 = 2;
    const DOCKER0: u32 = 3;
    const ETH1: u32 = 4;

    /// `"10.0.0.0/8"` or `"fd00::/8"` as a [`Cidr`].
    fn cidr(s: &str) -> Cidr {
        let (ip, len) = s.split_once('/').unwrap();
        Cidr::new(ip.parse().unwrap(), len.parse().unwrap()).unwrap()
    }

    fn route(prefix: &str, oifs: &[u32], metric: u32) -> RouteEntry {
        RouteEntry {
            prefix: cidr(prefix),
            oifs: oifs.to_vec(),
            table: MAIN_TABLE,
            metric,
            kind: RouteKind::Unicast,
        }
    }

    fn reject(prefix: &str, kind: RouteKind) -> RouteEntry {
        RouteEntry {
            kind,
            ..route(prefix, &[], 0)
        }
    }

    fn rp(routes: &[RouteEntry], ifindex: u32) -> Vec<String> {
        reverse_path_prefixes(routes, ifindex)
            .iter()
            .map(Cidr::to_string)
            .collect()
    }

    /// The complement of 172.17.0.0/16 in 0.0.0.0/0, in address order.
    const NOT_172_17: [&str; 16] = [
        "0.0.0.0/1",
        "128.0.0.0/3",
        "160.0.0.0/5",
        "168.0.0.0/6",
        "172.0.0.0/12",
        "172.16.0.0/16",
        "172.18.0.0/15",
        "172.20.0.0/14",
        "172.24.0.0/13",
        "172.32.0.0/11",
        "172.64.0.0/10",
        "172.128.0.0/9",
        "173.0.0.0/8",
        "174.0.0.0/7",
        "176.0.0.0/4",
        "192.0.0.0/2",
    ];

    #[test]
    fn empty_table_routes_nothing() {
        assert!(reverse_path_prefixes(&[], ETH0).is_empty());
    }

    #[test]
    fn default_route_only_is_all_of_ipv4() {
        let routes = [route("0.0.0.0/0", &[ETH0], 0)];
        assert_eq!(rp(&routes, ETH0), ["0.0.0.0/0"]);
        assert!(rp(&routes, DOCKER0).is_empty());
    }

    #[test]
    fn more_specific_route_elsewhere_leaves_the_complement() {
        let routes = [
            route("0.0.0.0/0", &[ETH0], 0),
            route("172.17.0.0/16", &[DOCKER0], 0),
        ];
        assert_eq!(rp(&routes, ETH0), NOT_172_17);
        assert_eq!(rp(&routes, DOCKER0), ["172.17.0.0/16"]);
        // Order of the table does not matter.
        let reversed = [routes[1].clone(), routes[0].clone()];
        assert_eq!(rp(&reversed, ETH0), NOT_172_17);
    }

    #[test]
    fn nested_route_back_via_the_first_interface() {
        let routes = [
            route("0.0.0.0/0", &[ETH0], 0),
            route("10.0.0.0/8", &[DOCKER0], 0),
            route("10.1.0.0/16", &[ETH0], 0),
        ];
        assert_eq!(
            rp(&routes, ETH0),
            [
                "0.0.0.0/5",
                "8.0.0.0/7",
                "10.1.0.0/16",
                "11.0.0.0/8",
                "12.0.0.0/6",
                "16.0.0.0/4",
                "32.0.0.0/3",
                "64.0.0.0/2",
                "128.0.0.0/1",
            ]
        );
        assert_eq!(
            rp(&routes, DOCKER0),
            [
                "10.0.0.0/16",
                "10.2.0.0/15",
                "10.4.0.0/14",
                "10.8.0.0/13",
                "10.16.0.0/12",
                "10.32.0.0/11",
                "10.64.0.0/10",
                "10.128.0.0/9",
            ]
        );
    }

    #[test]
    fn more_specific_routes_via_the_same_interface_merge_away() {
        let routes = [
            route("0.0.0.0/0", &[ETH0], 0),
            route("10.0.0.0/8", &[ETH0], 0),
            route("10.1.2.0/24", &[ETH0], 0),
            route("192.168.0.0/25", &[ETH0], 0),
            route("192.168.0.128/25", &[ETH0], 0),
        ];
        assert_eq!(rp(&routes, ETH0), ["0.0.0.0/0"]);
    }

    #[test]
    fn sibling_routes_merge_into_their_parent() {
        let routes = [
            route("192.168.0.0/25", &[ETH0], 0),
            route("192.168.0.128/25", &[ETH0], 0),
        ];
        assert_eq!(rp(&routes, ETH0), ["192.168.0.0/24"]);
    }

    #[test]
    fn refusing_routes_shadow_less_specific_ones() {
        let routes = [
            route("10.0.0.0/8", &[ETH0], 0),
            reject("10.0.0.0/9", RouteKind::Blackhole),
            reject("10.128.0.0/10", RouteKind::Unreachable),
            reject("10.192.0.0/11", RouteKind::Prohibit),
        ];
        assert_eq!(rp(&routes, ETH0), ["10.224.0.0/11"]);
    }

    #[test]
    fn ipv6_default_route_stays_out_of_the_ipv4_mapped_range() {
        let routes = [route("::/0", &[ETH0], 1024)];
        let got = reverse_path_prefixes(&routes, ETH0);
        // The complement of one /96 in ::/0 is 96 prefixes, none of them IPv4.
        assert_eq!(got.len(), 96);
        assert!(got.iter().all(|c| !c.is_v4()));
        let mapped = Cidr::host("1.2.3.4".parse().unwrap());
        assert!(!got.iter().any(|c| c.contains(&mapped.addr.to_be_bytes())));
        let native = Cidr::host("2001:db8::1".parse().unwrap());
        assert!(got.iter().any(|c| c.contains(&native.addr.to_be_bytes())));
        assert!(got.contains(&cidr("8000::/1")));
        assert!(got.contains(&cidr("::fffe:0:0/96")));
        assert!(got.contains(&cidr("::1:0:0:0/80")));
    }

    #[test]
    fn ipv4_and_ipv6_defaults_stay_apart() {
        let routes = [route("::/0", &[ETH0], 1024), route("0.0.0.0/0", &[ETH0], 0)];
        let got = reverse_path_prefixes(&routes, ETH0);
        assert_eq!(got.len(), 97, "not merged into ::/0");
        assert_eq!(got.iter().filter(|c| c.is_v4()).count(), 1);
        assert!(got.contains(&cidr("0.0.0.0/0")));
    }

    #[test]
    fn ipv6_more_specific_route_elsewhere() {
        let routes = [
            route("2001:db8::/32", &[ETH0], 256),
            route("2001:db8:1::/48", &[DOCKER0], 256),
            route("fe80::/64", &[ETH0], 256),
            route("fe80::/64", &[DOCKER0], 256),
        ];
        assert_eq!(rp(&routes, DOCKER0), ["2001:db8:1::/48", "fe80::/64"]);
        let eth0 = rp(&routes, ETH0);
        assert_eq!(eth0.len(), 16 + 1);
        assert!(eth0.contains(&"2001:db8::/48".to_string()));
        assert!(eth0.contains(&"2001:db8:8000::/33".to_string()));
        assert!(eth0.contains(&"fe80::/64".to_string()));
    }

    #[test]
    fn multipath_counts_for_every_nexthop() {
        let routes = [
            route("0.0.0.0/0", &[ETH0, ETH1], 0),
            route("172.17.0.0/16", &[DOCKER0], 0),
        ];
        assert_eq!(rp(&routes, ETH0), NOT_172_17);
        assert_eq!(rp(&routes, ETH1), NOT_172_17);
    }

    #[test]
    fn lowest_metric_wins_and_equal_metrics_all_count() {
        let routes = [
            route("10.0.0.0/8", &[ETH1], 100),
            route("10.0.0.0/8", &[ETH0], 50),
            route("10.0.0.0/8", &[DOCKER0], 600),
        ];
        assert_eq!(rp(&routes, ETH0), ["10.0.0.0/8"]);
        assert!(rp(&routes, ETH1).is_empty());
        assert!(rp(&routes, DOCKER0).is_empty());
        // A refusing route with a lower metric wins too.
        let mut shadowed = routes.to_vec();
        shadowed.push(RouteEntry {
            metric: 10,
            ..reject("10.0.0.0/8", RouteKind::Unreachable)
        });
        assert!(rp(&shadowed, ETH0).is_empty());
        let tied = [
            route("10.0.0.0/8", &[ETH1], 50),
            route("10.0.0.0/8", &[ETH0], 50),
        ];
        assert_eq!(rp(&tied, ETH0), ["10.0.0.0/8"]);
        assert_eq!(rp(&tied, ETH1), ["10.0.0.0/8"]);
    }

    #[test]
    fn host_routes_work() {
        let routes = [
            route("0.0.0.0/0", &[ETH0], 0),
            route("10.0.0.1/32", &[DOCKER0], 0),
        ];
        let eth0 = rp(&routes, ETH0);
        assert_eq!(eth0.len(), 32);
        assert!(eth0.contains(&"10.0.0.0".to_string()), "the /32 sibling");
        assert_eq!(rp(&routes, DOCKER0), ["10.0.0.1"]);
        let v6 = [route("::1/128", &[ETH0], 0)];
        assert_eq!(rp(&v6, ETH0), ["::1"]);
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Routes that nest a lot: addresses drawn from a few narrow regions of each family.
    fn random_table(rng: &mut Rng, n: usize) -> Vec<RouteEntry> {
        let mut routes = Vec::with_capacity(n);
        for _ in 0..n {
            let (ip, len) = if rng.below(2) == 0 {
                let base = [0x0a00_0000u32, 0xac10_0000, 0xc0a8_0000][rng.below(3) as usize];
                let ip = Ipv4Addr::from(base | (rng.next() as u32 & 0x000f_ffff));
                (
                    IpAddr::V4(ip),
                    [0, 8, 12, 16, 20, 24, 28, 31, 32][rng.below(9) as usize],
                )
            } else {
                let ip = match rng.below(4) {
                    0 => 0x2001_0db8u128 << 96 | u128::from(rng.next()) << 32,
                    1 => 0xfd00 << 112 | u128::from(rng.next()) << 32,
                    2 => u128::from(rng.next()) << 32,
                    // Around the IPv4-mapped range: ::fffe:0:0, ::ffff:0:0, ::1:0:0:0.
                    _ => (0xfffe + u128::from(rng.below(3))) << 32,
                };
                let ip = Ipv6Addr::from(ip);
                (
                    IpAddr::V6(ip),
                    [0, 1, 32, 48, 64, 80, 95, 127, 128][rng.below(9) as usize],
                )
            };
            let prefix = Cidr::new(ip, len).unwrap();
            if ip.is_ipv6() && prefix.is_v4() {
                continue;
            }
            let kind = match rng.below(10) {
                0 => RouteKind::Blackhole,
                _ => RouteKind::Unicast,
            };
            let oifs = match (kind, rng.below(4)) {
                (RouteKind::Unicast, 0) => vec![ETH0, ETH1],
                (RouteKind::Unicast, 1) => vec![ETH1],
                (RouteKind::Unicast, 2) => vec![DOCKER0],
                (RouteKind::Unicast, _) => vec![ETH0],
                _ => vec![],
            };
            routes.push(RouteEntry {
                prefix,
                oifs,
                table: MAIN_TABLE,
                metric: [0, 100, 1024][rng.below(3) as usize],
                kind,
            });
        }
        routes
    }

    /// The answer for one address by brute force: longest match of its family, lowest
    /// metric among those, any of the tied winners via `ifindex`.
    fn brute_force(routes: &[RouteEntry], addr: u128, ifindex: u32) -> bool {
        let bytes = addr.to_be_bytes();
        let v4 = V4_SPACE.contains(&bytes);
        let matching: Vec<&RouteEntry> = routes
            .iter()
            .filter(|r| r.prefix.is_v4() == v4 && r.prefix.contains(&bytes))
            .collect();
        let Some(len) = matching.iter().map(|r| r.prefix.len).max() else {
            return false;
        };
        let longest: Vec<&&RouteEntry> = matching.iter().filter(|r| r.prefix.len == len).collect();
        let metric = longest.iter().map(|r| r.metric).min().unwrap();
        longest
            .iter()
            .any(|r| r.metric == metric && r.routes_via(ifindex))
    }

    /// Sorted, disjoint, no two siblings (which would merge), never straddling the IPv4
    /// boundary.
    fn assert_minimal(got: &[Cidr]) {
        for pair in got.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let a_last = a.addr | !Cidr::mask_of(a.len);
            assert!(a_last < b.addr, "{a} and {b} overlap or are unsorted");
            let siblings = a.len == b.len
                && a.len > 0
                && a.addr ^ b.addr == 1u128 << (128 - u32::from(a.len))
                && (a.is_v4() == b.is_v4());
            assert!(!siblings, "{a} and {b} should have merged");
        }
        for c in got {
            // A prefix shorter than /96 either holds the whole mapped range or none of it.
            let straddles = c.len < 96 && c.contains(&V4_SPACE.addr.to_be_bytes());
            assert!(!straddles, "{c} covers the IPv4-mapped range");
        }
    }

    #[test]
    fn random_tables_agree_with_brute_force() {
        let mut rng = Rng(0x5eed_f00d_b1d9);
        let mut outcomes = [0usize; 2];
        for round in 0..20 {
            let routes = random_table(&mut rng, 150);
            let mut samples: Vec<u128> = Vec::new();
            for r in &routes {
                let last = r.prefix.addr | !Cidr::mask_of(r.prefix.len);
                samples.extend([
                    r.prefix.addr,
                    last,
                    r.prefix.addr.wrapping_sub(1),
                    last.wrapping_add(1),
                ]);
            }
            for _ in 0..200 {
                samples.push((u128::from(rng.next()) << 64) | u128::from(rng.next()));
                samples.push(V4_SPACE.addr | u128::from(rng.next() as u32));
            }
            for ifindex in [ETH0, ETH1, DOCKER0] {
                let got = reverse_path_prefixes(&routes, ifindex);
                assert_minimal(&got);
                for &addr in &samples {
                    let bytes = addr.to_be_bytes();
                    let inside = got.iter().any(|c| c.contains(&bytes));
                    outcomes[usize::from(inside)] += 1;
                    assert_eq!(
                        inside,
                        brute_force(&routes, addr, ifindex),
                        "round {round}, ifindex {ifindex}, address {}",
                        Cidr::host(IpAddr::V6(Ipv6Addr::from(addr)))
                    );
                }
            }
        }
        // Both answers occur often, so the comparison means something.
        assert!(outcomes.iter().all(|&n| n > 10_000), "{outcomes:?}");
    }

    #[test]
    fn a_full_table_of_100k_routes_is_quick() {
        let mut rng = Rng(42);
        let mut routes = vec![route("0.0.0.0/0", &[ETH0], 0), route("::/0", &[ETH0], 1024)];
        for _ in 0..100_000 {
            let ip = Ipv4Addr::from(rng.next() as u32);
            let len = 8 + rng.below(17) as u8;
            let oif = [ETH0, ETH1, DOCKER0][rng.below(3) as usize];
            let mut r = route("0.0.0.0/0", &[oif], 0);
            r.prefix = Cidr::new(IpAddr::V4(ip), len).unwrap();
            routes.push(r);
        }
        let start = std::time::Instant::now();
        let got = reverse_path_prefixes(&routes, ETH0);
        let took = start.elapsed();
        assert_minimal(&got);
        assert!(!got.is_empty());
        // Generous even for an unoptimised build on a busy 2-core machine.
        assert!(took.as_secs() < 10, "took {took:?}");
    }

    #[test]
    fn reads_a_unicast_route_message() {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(172, 17, 0, 0), 16)
            .output_interface(DOCKER0)
            .priority(100)
            .build();
        let entry = RouteEntry::from_message(&msg).unwrap();
        assert_eq!(entry, route("172.17.0.0/16", &[DOCKER0], 100));
        assert!(entry.routes_via(DOCKER0));
        assert!(!entry.routes_via(ETH0));
    }

    #[test]
    fn reads_default_and_ipv6_route_messages() {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(Ipv4Addr::new(192, 0, 2, 1))
            .output_interface(ETH0)
            .build();
        assert_eq!(
            RouteEntry::from_message(&msg).unwrap().prefix,
            cidr("0.0.0.0/0")
        );
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix("2001:db8::".parse().unwrap(), 32)
            .output_interface(ETH0)
            .build();
        assert_eq!(
            RouteEntry::from_message(&msg).unwrap().prefix,
            cidr("2001:db8::/32")
        );
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .output_interface(ETH0)
            .build();
        let default6 = RouteEntry::from_message(&msg).unwrap();
        assert_eq!(default6.prefix, cidr("::/0"));
        assert!(!default6.prefix.is_v4());
    }

    #[test]
    fn reads_multipath_route_messages() {
        let hops = [ETH1, ETH0, ETH1]
            .iter()
            .map(|&i| RouteNextHopBuilder::new_ipv4().interface(i).build())
            .collect();
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(198, 51, 100, 0), 24)
            .multipath(hops)
            .build();
        let entry = RouteEntry::from_message(&msg).unwrap();
        assert_eq!(entry.oifs, [ETH0, ETH1]);
    }

    #[test]
    fn keeps_refusing_routes_and_drops_the_rest() {
        let build = |kind| {
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::new(10, 0, 0, 0), 8)
                .kind(kind)
                .build()
        };
        let blackhole = RouteEntry::from_message(&build(RouteType::BlackHole)).unwrap();
        assert_eq!(blackhole.kind, RouteKind::Blackhole);
        assert!(blackhole.oifs.is_empty());
        for kind in [RouteType::Local, RouteType::Broadcast, RouteType::Multicast] {
            assert_eq!(RouteEntry::from_message(&build(kind)), None, "{kind:?}");
        }
        let mut cloned = build(RouteType::Unicast);
        cloned.header.flags |= RouteFlags::Cloned;
        assert_eq!(RouteEntry::from_message(&cloned), None);
        let mut tos = build(RouteType::Unicast);
        tos.header.tos = 0x10;
        assert_eq!(RouteEntry::from_message(&tos), None);
    }

    #[test]
    fn drops_ipv6_routes_inside_the_ipv4_mapped_range() {
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix("::ffff:10.0.0.0".parse().unwrap(), 104)
            .output_interface(ETH0)
            .build();
        assert_eq!(RouteEntry::from_message(&msg), None);
    }

    #[test]
    fn reads_the_table() {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(ETH0)
            .table_id(1000)
            .build();
        assert_eq!(RouteEntry::from_message(&msg).unwrap().table, 1000);
        let local = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(ETH0)
            .table_id(255)
            .build();
        assert_eq!(RouteEntry::from_message(&local).unwrap().table, 255);
    }

    #[test]
    fn notifications_of_other_tables_are_skipped() {
        let main = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(ETH0)
            .build();
        let other = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(ETH0)
            .table_id(100)
            .build();
        let wrap = |m| NetlinkMessage::from(m);
        assert_eq!(
            event_of(wrap(RouteNetlinkMessage::NewRoute(main.clone()))),
            Some(RouteEvent::Added(route("0.0.0.0/0", &[ETH0], 0)))
        );
        assert_eq!(
            event_of(wrap(RouteNetlinkMessage::DelRoute(main))),
            Some(RouteEvent::Removed(route("0.0.0.0/0", &[ETH0], 0)))
        );
        assert_eq!(event_of(wrap(RouteNetlinkMessage::NewRoute(other))), None);
    }
}
