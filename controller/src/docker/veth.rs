//! Finding a container's host-side veth the reliable way: enter the container's network
//! namespace, read `IFLA_LINK` of its interface on the network (the peer's ifindex), and
//! look that index up in the bridge's namespace, checking the peer points back. Names are
//! never guessed (Docker's `vethXXXXXXX` names are random).
use crate::netlink::{LinkFacts, NetlinkError, Netns, Rtnl};

/// The host-side end of the veth whose other end is the container's interface on the
/// network: the one with MAC `mac` if given, else `eth0`. `pid` is the container's init
/// process; `bridge_ns` is a handle on the namespace the bridge lives in.
pub async fn host_veth_of(
    pid: u32,
    mac: Option<[u8; 6]>,
    bridge_ns: &Rtnl,
) -> Result<LinkFacts, NetlinkError> {
    let ns = Netns::open(&format!("/proc/{pid}/ns/net"))?;
    let inside = ns.rtnl().await?;
    let ifc = match mac {
        Some(mac) => inside
            .links()
            .await?
            .into_iter()
            .find(|l| l.mac == Some(mac))
            .ok_or_else(|| NetlinkError::NoSuchLink {
                what: format!("with MAC {}", fmt_mac(&mac)),
                netns: ns.label().to_string(),
            })?,
        None => inside.link_by_name("eth0").await?,
    };
    let peer_index = ifc.link.ok_or_else(|| NetlinkError::Unexpected {
        op: format!("reading {} in {}", ifc.name, ns.label()),
        msg: "it has no peer (IFLA_LINK): not a veth".into(),
    })?;
    let host = bridge_ns.link_by_index(peer_index).await?;
    if host.link != Some(ifc.index) || host.kind.as_deref() != Some("veth") {
        return Err(NetlinkError::Unexpected {
            op: format!("matching {}'s peer (index {peer_index})", ifc.name),
            msg: format!(
                "{} in {} is not its peer; is the bridge's namespace the engine's?",
                host.name,
                bridge_ns.netns_label()
            ),
        });
    }
    Ok(host)
}

/// Formats a MAC as `02:42:ac:11:00:02`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
