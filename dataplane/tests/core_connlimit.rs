//! `-m connlimit`'s input: the engine hands the policy, in every record, the number of
//! admitted flows it holds from the record's source address (`src_conns`), counted while the
//! flows live and no longer once they expire, are denied, or leave with their port.

use dataplane::policy::{Action, FnPolicy, PacketRecord, VerdictRecord};
use dataplane::sim::*;
use rules_wasm::abi::tcp_flags::{ACK, RST, SYN};
use std::time::Duration;

/// Admits a new flow while its source holds fewer than two: `--connlimit-above 2 -j DROP`
/// before an ACCEPT.
fn at_most_two() -> Box<dyn dataplane::policy::Policy> {
    Box::new(FnPolicy::new(1, |r: &PacketRecord| {
        if r.src_conns + 1 > 2 {
            VerdictRecord::new(Action::Drop, 7)
        } else {
            VerdictRecord::new(Action::Accept, 1)
        }
    }))
}

fn forwarded(got: &[Vec<Vec<u8>>; 4]) -> usize {
    got.iter().map(Vec::len).sum()
}

#[test]
fn the_third_connection_of_a_source_is_refused_until_one_expires() {
    let mut lab = Lab::new(at_most_two());
    for sport in [40000, 40001] {
        let got = lab.send(PARENT, &tcp_frame(PARENT, CHILD, sport, 80, SYN, &[]));
        assert_eq!(forwarded(&got), 1, "connection from port {sport} admitted");
    }
    let third = tcp_frame(PARENT, CHILD, 40002, 80, SYN, &[]);
    assert_eq!(
        forwarded(&lab.send(PARENT, &third)),
        0,
        "the third is over the limit"
    );
    // Another source is counted apart.
    let other = tcp_frame(OTHER, CHILD, 40000, 80, SYN, &[]);
    assert_eq!(forwarded(&lab.send(OTHER, &other)), 1);
    // Once the two half-open connections time out (and the denied one too), the source may
    // open new ones.
    lab.advance(Duration::from_secs(600));
    let fourth = tcp_frame(PARENT, CHILD, 40003, 80, SYN, &[]);
    assert_eq!(
        forwarded(&lab.send(PARENT, &fourth)),
        1,
        "counts follow expiry"
    );
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn a_reset_connection_stops_counting_at_once() {
    let mut lab = Lab::new(at_most_two());
    for sport in [41000, 41001] {
        let got = lab.send(PARENT, &tcp_frame(PARENT, CHILD, sport, 80, SYN, &[]));
        assert_eq!(forwarded(&got), 1);
    }
    assert_eq!(
        forwarded(&lab.send(PARENT, &tcp_frame(PARENT, CHILD, 41002, 80, SYN, &[]))),
        0
    );
    // The responder resets the first connection: it is closed, as Linux's connlimit sees it.
    let rst = tcp_frame(CHILD, PARENT, 80, 41000, RST | ACK, &[]);
    assert_eq!(forwarded(&lab.send(CHILD, &rst)), 1);
    lab.advance(Duration::from_millis(10));
    assert_eq!(
        forwarded(&lab.send(PARENT, &tcp_frame(PARENT, CHILD, 41003, 80, SYN, &[]))),
        1,
        "a reset connection no longer counts"
    );
}
