//! Link, address and route operations on one namespace, over an rtnetlink handle.
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use rtnetlink::{
    LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::{NetlinkError, Netns};

/// An rtnetlink handle bound to one network namespace (the one its socket was opened in).
#[derive(Clone, Debug)]
pub struct Rtnl {
    handle: rtnetlink::Handle,
    /// The namespace's label, for messages.
    netns: String,
}

/// What bridgewall needs to know about one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    /// Interface index in its namespace.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU in bytes.
    pub mtu: Option<u32>,
    /// Hardware address, when it has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// Index of the bridge (or other controller) it is enslaved to.
    pub controller: Option<u32>,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: set when the peer lives in another namespace.
    pub link_netnsid: Option<i32>,
    /// The link kind (`veth`, `bridge`...), when it has one.
    pub kind: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// For a bridge port: whether hairpin mode is on (frames may leave by the port they
    /// came in on). Docker turns it on for its veths when its userland proxy is off.
    pub hairpin: bool,
}

impl LinkFacts {
    fn from_message(msg: &LinkMessage) -> LinkFacts {
        let mut facts = LinkFacts {
            index: msg.header.index,
            name: String::new(),
            mtu: None,
            mac: None,
            controller: None,
            link: None,
            link_netnsid: None,
            kind: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            hairpin: false,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => facts.name = n.clone(),
                LinkAttribute::Mtu(m) => facts.mtu = Some(*m),
                LinkAttribute::Address(a) => facts.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::Controller(c) if *c != 0 => facts.controller = Some(*c),
                LinkAttribute::Link(l) if *l != 0 => facts.link = Some(*l),
                LinkAttribute::LinkNetNsId(id) => facts.link_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => facts.kind = Some(kind.to_string()),
                            LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                                facts.hairpin |= port
                                    .iter()
                                    .any(|p| matches!(p, InfoBridgePort::HairpinMode(true)));
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        facts
    }
}

/// The far end of a veth pair being created: its name and, optionally, the namespace it is
/// created in and its MAC address.
#[derive(Debug)]
pub struct VethPeer<'a> {
    /// Name of the peer interface (in its namespace).
    pub name: &'a str,
    /// Namespace to create the peer in; `None` keeps it beside the first end.
    pub netns: Option<&'a Netns>,
    /// MAC address for the peer (the lab gives containers Docker-style MACs).
    pub mac: Option<[u8; 6]>,
    /// MTU of both ends; `None` keeps the kernel's default. The takeover's gateway pair
    /// takes the bridge's MTU, since native XDP on a veth caps the peer's.
    pub mtu: Option<u32>,
}

impl Rtnl {
    pub(crate) fn new(handle: rtnetlink::Handle, netns: String) -> Rtnl {
        Rtnl { handle, netns }
    }

    /// Opens a handle on the calling process's own namespace.
    pub async fn current() -> Result<Rtnl, NetlinkError> {
        Netns::current()?.rtnl().await
    }

    /// The namespace this handle works on, for messages.
    pub fn netns_label(&self) -> &str {
        &self.netns
    }

    /// All links in the namespace.
    pub async fn links(&self) -> Result<Vec<LinkFacts>, NetlinkError> {
        let op = format!("listing links in {}", self.netns);
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::rtnl(&op, e))?;
        Ok(msgs.iter().map(LinkFacts::from_message).collect())
    }

    /// The link called `name`, or [`NetlinkError::NoSuchLink`].
    pub async fn link_by_name(&self, name: &str) -> Result<LinkFacts, NetlinkError> {
        let req = self.handle.link().get().match_name(name.to_string());
        self.one_link(req, name.to_string()).await
    }

    /// The link with index `index`, or [`NetlinkError::NoSuchLink`].
    pub async fn link_by_index(&self, index: u32) -> Result<LinkFacts, NetlinkError> {
        let req = self.handle.link().get().match_index(index);
        self.one_link(req, format!("with index {index}")).await
    }

    async fn one_link(
        &self,
        req: rtnetlink::LinkGetRequest,
        what: String,
    ) -> Result<LinkFacts, NetlinkError> {
        let mut stream = req.execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(LinkFacts::from_message(&msg)),
            Ok(None) => Err(self.no_such(what)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                Err(self.no_such(what))
            }
            Err(e) => Err(NetlinkError::rtnl(
                format!("looking up link {what} in {}", self.netns),
                e,
            )),
        }
    }

    fn no_such(&self, what: String) -> NetlinkError {
        NetlinkError::NoSuchLink {
            what,
            netns: self.netns.clone(),
        }
    }

    /// The index of the link called `name`.
    pub async fn index_of(&self, name: &str) -> Result<u32, NetlinkError> {
        Ok(self.link_by_name(name).await?.index)
    }

    /// The MTU of the link called `name`.
    pub async fn mtu(&self, name: &str) -> Result<u32, NetlinkError> {
        let facts = self.link_by_name(name).await?;
        facts.mtu.ok_or_else(|| NetlinkError::Unexpected {
            op: format!("reading the MTU of {name}"),
            msg: "the kernel reported no MTU".into(),
        })
    }

    /// The links enslaved to the bridge called `bridge` (its ports).
    pub async fn bridge_ports(&self, bridge: &str) -> Result<Vec<LinkFacts>, NetlinkError> {
        let br = self.link_by_name(bridge).await?;
        let mut ports: Vec<LinkFacts> = self
            .links()
            .await?
            .into_iter()
            .filter(|l| l.controller == Some(br.index))
            .collect();
        ports.sort_by_key(|l| l.index);
        Ok(ports)
    }

    /// Creates a bridge called `name` (up) and returns its index.
    pub async fn add_bridge(&self, name: &str) -> Result<u32, NetlinkError> {
        let op = format!("creating bridge {name} in {}", self.netns);
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|e| NetlinkError::rtnl(&op, e))?;
        self.index_of(name).await
    }

    /// Creates a veth pair: `name` here, `peer` in the peer's namespace (created there
    /// directly, so it never appears in ours). Returns the index of `name`.
    pub async fn add_veth(&self, name: &str, peer: VethPeer<'_>) -> Result<u32, NetlinkError> {
        let op = format!(
            "creating veth {name} (peer {}) in {}",
            peer.name, self.netns
        );
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new().name(peer.name.to_string());
        if let Some(ns) = peer.netns {
            peer_msg = peer_msg.setns_by_fd(ns.raw_fd());
        }
        if let Some(mac) = peer.mac {
            peer_msg = peer_msg.address(mac.to_vec());
        }
        let mut veth = LinkVeth::new(name, peer.name);
        if let Some(mtu) = peer.mtu {
            peer_msg = peer_msg.mtu(mtu);
            veth = veth.mtu(mtu);
        }
        let msg = veth
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::rtnl(&op, e))?;
        self.index_of(name).await
    }

    /// Sets a link's MAC address. The takeover pins a bridge's address with it, which the
    /// kernel would otherwise re-derive from the bridge's ports as they come and go.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        self.set(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
            "MAC",
            index,
        )
        .await
    }

    /// Brings a link up.
    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.set(LinkUnspec::new_with_index(index).up().build(), "up", index)
            .await
    }

    /// Brings a link down.
    pub async fn set_down(&self, index: u32) -> Result<(), NetlinkError> {
        self.set(
            LinkUnspec::new_with_index(index).down().build(),
            "down",
            index,
        )
        .await
    }

    /// Enslaves a link to a bridge (`ip link set DEV master BR`).
    pub async fn set_master(&self, index: u32, bridge_index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .controller(bridge_index)
            .build();
        self.set(msg, "master", index).await
    }

    /// Turns hairpin mode of a bridge port on or off (`ip link set DEV type bridge_slave
    /// hairpin on|off`).
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        // Port (slave) settings go in RTM_NEWLINK without NLM_F_CREATE: RTM_SETLINK ignores
        // IFLA_INFO_SLAVE_DATA.
        let op = format!("setting link {index} hairpin in {}", self.netns);
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::rtnl(op, e))
    }

    /// Takes a link off its bridge (`ip link set DEV nomaster`).
    pub async fn set_nomaster(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).nocontroller().build();
        self.set(msg, "nomaster", index).await
    }

    /// Renames a link (it must be down).
    pub async fn rename(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .name(name.to_string())
            .build();
        self.set(msg, "rename", index).await
    }

    /// Moves a link into another namespace.
    pub async fn move_to(&self, index: u32, netns: &Netns) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.raw_fd())
            .build();
        self.set(msg, "move to another netns", index).await
    }

    /// Deletes a link (for a veth, both ends go).
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let op = format!("deleting link {index} in {}", self.netns);
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| NetlinkError::rtnl(op, e))
    }

    async fn set(&self, msg: LinkMessage, what: &str, index: u32) -> Result<(), NetlinkError> {
        let op = format!("setting link {index} {what} in {}", self.netns);
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::rtnl(op, e))
    }

    /// Adds an address to a link (`ip addr add ADDR/PREFIX dev DEV`).
    pub async fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let op = format!(
            "adding {addr}/{prefix_len} to link {index} in {}",
            self.netns
        );
        self.handle
            .address()
            .add(index, addr, prefix_len)
            .execute()
            .await
            .map_err(|e| NetlinkError::rtnl(op, e))
    }

    /// The addresses on link `index` (`ip addr show dev DEV`), with prefix lengths; IPv6
    /// link-local ones left out (they say nothing about who the host is on the bridge).
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
        let op = format!("listing addresses of link {index} in {}", self.netns);
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::rtnl(&op, e))?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| m.header.index == index) {
            // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS
            // otherwise. Prefer LOCAL when present.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                let link_local =
                    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                if !link_local {
                    out.push((ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Adds an IPv4 route to `dest/prefix_len` via `gateway`; prefix 0 is the default route.
    pub async fn add_route_v4(
        &self,
        dest: Ipv4Addr,
        prefix_len: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let op = format!(
            "adding route {dest}/{prefix_len} via {gateway} in {}",
            self.netns
        );
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix_len)
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::rtnl(op, e))
    }

    /// Adds or replaces a permanent neighbour entry: `ip` reached at `mac` on link `index`
    /// (`ip neigh replace IP lladdr MAC dev DEV nud permanent`), so no ARP or neighbour
    /// discovery is needed to reach it.
    pub async fn replace_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::neighbour::NeighbourState;
        let op = format!("setting neighbour {ip} on link {index} in {}", self.netns);
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::rtnl(op, e))
    }

    /// Whether a link of this kind is a bridge (used to tell "no such bridge" apart from
    /// "that is not a bridge").
    pub fn is_bridge(facts: &LinkFacts) -> bool {
        facts.kind.as_deref() == Some(&InfoKind::Bridge.to_string())
    }
}

/// The root queueing discipline of a link and its counters (`tc -s qdisc show dev DEV`,
/// root only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QdiscStats {
    /// The qdisc's kind (`pfifo`, `noqueue`, `fq_codel`, …).
    pub kind: String,
    /// Packets it has sent on to the device.
    pub packets: u64,
    /// Packets it dropped (queue full, or its own policy).
    pub drops: u64,
    /// Packets waiting in it now.
    pub qlen: u64,
    /// Bytes waiting in it now.
    pub backlog: u64,
    /// Packets the device handed back (queue stopped) to be sent again.
    pub requeues: u64,
    /// Times it was over its limit.
    pub overlimits: u64,
}

/// A link's packet counters (`IFLA_STATS64`), the part metrics need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Packets dropped on transmit (for a veth: its peer's ring was full or the peer down).
    pub tx_dropped: u64,
}

impl Rtnl {
    /// Sets a link's MTU (`ip link set DEV mtu N`).
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set(
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
            "mtu",
            index,
        )
        .await
    }

    /// Sets a link's transmit queue length (`ip link set DEV txqueuelen N`): the default
    /// limit of a fifo qdisc added afterwards.
    pub async fn set_txqueuelen(&self, index: u32, len: u32) -> Result<(), NetlinkError> {
        self.set(
            LinkUnspec::new_with_index(index).txqueuelen(len).build(),
            "txqueuelen",
            index,
        )
        .await
    }

    /// Puts a root qdisc of `kind` with the kernel's default options on a link, replacing
    /// the one there (`tc qdisc replace dev DEV root KIND`). A veth defaults to `noqueue`,
    /// whose full ring drops; under a real qdisc (`pfifo`, `pfifo_fast`, `fq_codel`, whose
    /// limit defaults to the link's txqueuelen) the veth stops its queue instead and the
    /// qdisc holds the excess, and its drops are counted ([`Rtnl::root_qdisc`]).
    pub async fn replace_root_qdisc(&self, index: u32, kind: &str) -> Result<(), NetlinkError> {
        use futures_util::StreamExt;
        use netlink_packet_core::{
            NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
        };
        use rtnetlink::packet_route::RouteNetlinkMessage;
        use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};

        let op = format!(
            "putting a root {kind} qdisc on link {index} in {}",
            self.netns
        );
        let index_i32 = i32::try_from(index).map_err(|_| NetlinkError::Unexpected {
            op: op.clone(),
            msg: "interface index out of range".into(),
        })?;
        let mut msg = TcMessage::with_index(index_i32);
        msg.header.parent = TcHandle::ROOT;
        msg.attributes.push(TcAttribute::Kind(kind.to_string()));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let mut handle = self.handle.clone();
        let mut replies = handle
            .request(req)
            .map_err(|e| NetlinkError::rtnl(&op, e))?;
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::Error(err) = reply.payload
                && err.code.is_some()
            {
                return Err(NetlinkError::rtnl(&op, rtnetlink::Error::NetlinkError(err)));
            }
        }
        Ok(())
    }

    /// The root qdisc of link `index` with its counters, or `None` when the dump lists none.
    pub async fn root_qdisc(&self, index: u32) -> Result<Option<QdiscStats>, NetlinkError> {
        use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcStats2};

        let op = format!("reading the qdisc of link {index} in {}", self.netns);
        let index_i32 = i32::try_from(index).map_err(|_| NetlinkError::Unexpected {
            op: op.clone(),
            msg: "interface index out of range".into(),
        })?;
        let msgs: Vec<TcMessage> = self
            .handle
            .qdisc()
            .get()
            .index(index_i32)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::rtnl(&op, e))?;
        let Some(root) = msgs
            .iter()
            .find(|m| m.header.index == index_i32 && m.header.parent == TcHandle::ROOT)
        else {
            return Ok(None);
        };
        let mut stats = QdiscStats::default();
        let mut have_stats2 = false;
        for attr in &root.attributes {
            match attr {
                TcAttribute::Kind(k) => stats.kind = k.clone(),
                TcAttribute::Stats2(list) => {
                    have_stats2 = true;
                    for s in list {
                        match s {
                            TcStats2::Basic(b) => stats.packets = u64::from(b.packets),
                            TcStats2::Queue(q) => {
                                stats.drops = u64::from(q.drops);
                                stats.qlen = u64::from(q.qlen);
                                stats.backlog = u64::from(q.backlog);
                                stats.requeues = u64::from(q.requeues);
                                stats.overlimits = u64::from(q.overlimits);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if !have_stats2 {
            // Old kernels: the compat `TCA_STATS` block only.
            if let Some(s) = root.attributes.iter().find_map(|a| match a {
                TcAttribute::Stats(s) => Some(s),
                _ => None,
            }) {
                stats.packets = u64::from(s.packets);
                stats.drops = u64::from(s.drops);
                stats.qlen = u64::from(s.qlen);
                stats.backlog = u64::from(s.backlog);
                stats.overlimits = u64::from(s.overlimits);
            }
        }
        Ok(Some(stats))
    }

    /// The packet counters of link `index`.
    pub async fn link_counters(&self, index: u32) -> Result<LinkCounters, NetlinkError> {
        let op = format!("reading the counters of link {index} in {}", self.netns);
        let mut stream = self.handle.link().get().match_index(index).execute();
        let msg = match stream.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(self.no_such(format!("with index {index}"))),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                return Err(self.no_such(format!("with index {index}")));
            }
            Err(e) => return Err(NetlinkError::rtnl(op, e)),
        };
        let mut counters = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::Stats64(s) => {
                    counters = Some(LinkCounters {
                        rx_packets: s.rx_packets,
                        tx_packets: s.tx_packets,
                        rx_dropped: s.rx_dropped,
                        tx_dropped: s.tx_dropped,
                    });
                    break;
                }
                LinkAttribute::Stats(s) if counters.is_none() => {
                    counters = Some(LinkCounters {
                        rx_packets: u64::from(s.rx_packets),
                        tx_packets: u64::from(s.tx_packets),
                        rx_dropped: u64::from(s.rx_dropped),
                        tx_dropped: u64::from(s.tx_dropped),
                    });
                }
                _ => {}
            }
        }
        counters.ok_or_else(|| NetlinkError::Unexpected {
            op,
            msg: "the kernel reported no link statistics".into(),
        })
    }
}
