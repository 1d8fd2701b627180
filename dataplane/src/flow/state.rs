//! Connection-tracking states and their timeouts.
//!
//! The TCP machine follows Linux conntrack's states closely enough that the timeouts mean
//! what an operator expects, without its sequence-window checks: the dataplane decides
//! whether a flow may exist, the endpoints' stacks still validate the segments.
use rules_wasm::abi::tcp_flags::{ACK, FIN, RST, SYN};
use std::time::Duration;

/// Which way a packet travels relative to the flow's originator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// From the endpoint that sent the flow's first packet.
    Original,
    /// From the other endpoint.
    Reply,
}

/// The state of one tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnState {
    /// TCP: the originator's SYN seen.
    TcpSynSent,
    /// TCP: the responder's SYN-ACK seen.
    TcpSynRecv,
    /// TCP: handshake complete (or picked up mid-stream).
    TcpEstablished,
    /// TCP: one side sent FIN.
    TcpFinWait,
    /// TCP: the other side acknowledged the first FIN without closing yet.
    TcpCloseWait,
    /// TCP: both sides sent FIN; waiting for the last ACK.
    TcpLastAck,
    /// TCP: closed in order; kept to absorb late segments.
    TcpTimeWait,
    /// TCP: reset.
    TcpClose,
    /// UDP: only the originator has sent.
    UdpUnreplied,
    /// UDP: both sides have sent.
    UdpAssured,
    /// ICMP echo, or another ICMP message.
    Icmp,
    /// Any other IP protocol.
    Other,
}

impl ConnState {
    /// Number of states (the size of the timeout table).
    pub const COUNT: usize = 12;

    /// Initial state of a flow whose first packet (from the originator) had `flags`.
    ///
    /// A first segment that is not a bare SYN is picked up as established, like Linux with
    /// `nf_conntrack_tcp_loose=1`, so flows survive a dataplane restart.
    pub fn initial_tcp(flags: u8) -> Self {
        if flags & RST != 0 {
            ConnState::TcpClose
        } else if flags & (SYN | ACK) == SYN {
            ConnState::TcpSynSent
        } else if flags & FIN != 0 {
            ConnState::TcpFinWait
        } else {
            ConnState::TcpEstablished
        }
    }

    /// True for the TCP states.
    pub fn is_tcp(self) -> bool {
        (self as u8) <= (ConnState::TcpClose as u8)
    }
}

/// TCP close bookkeeping kept beside the state: which sides have sent FIN, and which first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FinSeen {
    /// The originator sent FIN.
    pub original: bool,
    /// The responder sent FIN.
    pub reply: bool,
    /// The side whose FIN came first (meaningful once either is set).
    pub first_reply: bool,
}

/// Advances a TCP flow on a segment with `flags` travelling `dir`.
pub fn tcp_transition(state: ConnState, fin: &mut FinSeen, dir: Dir, flags: u8) -> ConnState {
    use ConnState::*;
    if flags & RST != 0 {
        return TcpClose;
    }
    let is_fin = flags & FIN != 0;
    let from_first_closer = (dir == Dir::Reply) == fin.first_reply;
    if is_fin {
        if !fin.original && !fin.reply {
            fin.first_reply = dir == Dir::Reply;
        }
        match dir {
            Dir::Original => fin.original = true,
            Dir::Reply => fin.reply = true,
        }
    }
    match state {
        TcpSynSent if dir == Dir::Reply && flags & (SYN | ACK) == SYN | ACK => TcpSynRecv,
        TcpSynRecv if dir == Dir::Original && flags & (SYN | ACK) == ACK && !is_fin => {
            TcpEstablished
        }
        TcpSynSent | TcpSynRecv | TcpEstablished if is_fin => TcpFinWait,
        TcpFinWait | TcpCloseWait if fin.original && fin.reply => TcpLastAck,
        TcpFinWait if !is_fin && flags & ACK != 0 && !from_first_closer => TcpCloseWait,
        TcpLastAck if !is_fin && flags & ACK != 0 => TcpTimeWait,
        // A fresh SYN on a closed tuple reopens it (port reuse), as Linux does.
        TcpTimeWait | TcpClose if dir == Dir::Original && flags & (SYN | ACK) == SYN => {
            *fin = FinSeen::default();
            TcpSynSent
        }
        s => s,
    }
}

/// How long an idle flow lives in each state. Defaults are Linux's conntrack defaults, except
/// `tcp_established` (Linux: 5 days), which operators commonly shorten, and `denied`, the
/// dataplane's own: how long a policy's Drop is cached before the policy is asked again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// After the originator's SYN.
    pub tcp_syn_sent: Duration,
    /// After the responder's SYN-ACK.
    pub tcp_syn_recv: Duration,
    /// Established.
    pub tcp_established: Duration,
    /// After the first FIN.
    pub tcp_fin_wait: Duration,
    /// After the first FIN was acknowledged.
    pub tcp_close_wait: Duration,
    /// After both FINs.
    pub tcp_last_ack: Duration,
    /// After an orderly close.
    pub tcp_time_wait: Duration,
    /// After a RST.
    pub tcp_close: Duration,
    /// UDP, one direction seen.
    pub udp_unreplied: Duration,
    /// UDP, both directions seen.
    pub udp_assured: Duration,
    /// ICMP.
    pub icmp: Duration,
    /// Other IP protocols.
    pub other: Duration,
    /// A denied flow (not refreshed by its packets, so the policy is asked again this often).
    pub denied: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_syn_recv: Duration::from_secs(60),
            tcp_established: Duration::from_secs(5 * 24 * 3600),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_close_wait: Duration::from_secs(60),
            tcp_last_ack: Duration::from_secs(30),
            tcp_time_wait: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_assured: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(600),
            denied: Duration::from_secs(5),
        }
    }
}

/// [`Timeouts`] as nanoseconds indexed by state, for the hot path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeoutTable {
    by_state: [u64; ConnState::COUNT],
    pub(crate) denied: u64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl TimeoutTable {
    pub(crate) fn new(t: &Timeouts) -> Self {
        Self {
            by_state: [
                ns(t.tcp_syn_sent),
                ns(t.tcp_syn_recv),
                ns(t.tcp_established),
                ns(t.tcp_fin_wait),
                ns(t.tcp_close_wait),
                ns(t.tcp_last_ack),
                ns(t.tcp_time_wait),
                ns(t.tcp_close),
                ns(t.udp_unreplied),
                ns(t.udp_assured),
                ns(t.icmp),
                ns(t.other),
            ],
            denied: ns(t.denied),
        }
    }

    #[inline(always)]
    pub(crate) fn of(&self, s: ConnState) -> u64 {
        self.by_state[s as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::ConnState::*;
    use super::*;
    use rules_wasm::abi::tcp_flags::PSH;

    fn run(steps: &[(Dir, u8)]) -> Vec<ConnState> {
        let mut fin = FinSeen::default();
        let mut s = ConnState::initial_tcp(steps[0].1);
        let mut out = vec![s];
        for &(d, f) in &steps[1..] {
            s = tcp_transition(s, &mut fin, d, f);
            out.push(s);
        }
        out
    }

    #[test]
    fn handshake_and_orderly_close() {
        use Dir::*;
        let got = run(&[
            (Original, SYN),
            (Reply, SYN | ACK),
            (Original, ACK),
            (Original, PSH | ACK),
            (Original, FIN | ACK),
            (Reply, ACK),
            (Reply, FIN | ACK),
            (Original, ACK),
        ]);
        assert_eq!(
            got,
            [
                TcpSynSent,
                TcpSynRecv,
                TcpEstablished,
                TcpEstablished,
                TcpFinWait,
                TcpCloseWait,
                TcpLastAck,
                TcpTimeWait
            ]
        );
    }

    #[test]
    fn reset_closes_and_syn_reopens() {
        use Dir::*;
        let got = run(&[(Original, SYN), (Reply, RST | ACK), (Original, SYN)]);
        assert_eq!(got, [TcpSynSent, TcpClose, TcpSynSent]);
    }

    #[test]
    fn mid_stream_pickup_is_established() {
        assert_eq!(ConnState::initial_tcp(ACK), TcpEstablished);
        assert_eq!(ConnState::initial_tcp(SYN | ACK), TcpEstablished);
    }

    #[test]
    fn state_count_matches_table() {
        assert_eq!(Other as usize + 1, ConnState::COUNT);
        assert!(TcpClose.is_tcp() && !UdpAssured.is_tcp());
    }
}
