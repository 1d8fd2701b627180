//! The example policies load against ABI v1 and decide as documented. The WAT example is
//! built in-process (the `wat` crate) and runs in the normal suite; the Rust examples need the
//! wasm32 target, so their test is ignored by default: run `rules-wasm/examples/build.sh`,
//! then `cargo test -p rules-wasm --test examples -- --ignored` (it fails, not skips, when
//! the built modules are missing).
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use common::Host;
use rules_wasm::abi::{
    Action, FlowState, PacketRecord, RULE_NONE, VerdictRecord, addr_bytes, proto,
};

fn ip(d: u8) -> [u8; 16] {
    addr_bytes(IpAddr::V4(Ipv4Addr::new(172, 17, 0, d)))
}

#[test]
fn wat_example_drops_echo_requests_to_port_3_only() {
    let text = include_str!("../examples/wat/drop-icmp-echo.wat");
    let wasm = wat::parse_str(text).unwrap();
    let engine = wasmtime::Engine::default();
    let mut host = Host::load(&engine, &wasm).unwrap();
    assert!(host.imports.is_empty());
    let echo = |p: u8, t: u8, out: u16| PacketRecord {
        protocol: p,
        icmp_type: t,
        out_port: out,
        ip_version: 4,
        ..Default::default()
    };
    let got = host.run(&[
        echo(proto::ICMP, 8, 3),
        echo(proto::ICMPV6, 128, 3),
        echo(proto::ICMP, 0, 3),
        echo(proto::ICMP, 8, 4),
        echo(proto::TCP, 8, 3),
    ]);
    let drop = VerdictRecord::new(Action::Drop, 1);
    let cont = VerdictRecord::new(Action::Continue, RULE_NONE);
    assert_eq!(got, [drop, drop, cont, cont, cont]);
}

fn built(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/out")
        .join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run rules-wasm/examples/build.sh first",
            p.display()
        )
    })
}

#[test]
#[ignore = "needs the wasm32-unknown-unknown target: run rules-wasm/examples/build.sh, then --ignored"]
fn rust_examples_load_and_decide() {
    let engine = wasmtime::Engine::default();

    // dns-only: 172.17.0.2 may only reach 172.17.0.3 on port 53.
    let mut dns = Host::load(&engine, &built("dns-only")).unwrap();
    assert!(
        dns.imports.is_empty(),
        "a module that never logs has no imports"
    );
    let p = |src: u8, dst: u8, pr: u8, dport: u16| PacketRecord {
        src: ip(src),
        dst: ip(dst),
        protocol: pr,
        dst_port: dport,
        ip_version: 4,
        ..Default::default()
    };
    let got = dns.run(&[
        p(2, 3, proto::UDP, 53),
        p(2, 3, proto::TCP, 53),
        p(2, 3, proto::TCP, 80),
        p(2, 4, proto::UDP, 53),
        p(4, 3, proto::TCP, 80),
    ]);
    let acts: Vec<Action> = got.iter().map(|v| v.action).collect();
    assert_eq!(
        acts,
        [
            Action::Accept,
            Action::Accept,
            Action::Drop,
            Action::Drop,
            Action::Continue
        ]
    );

    // conn-rate-limit: a burst of 20, then a quarter of its own flood; re-decisions untouched.
    let mut rl = Host::load(&engine, &built("conn-rate-limit")).unwrap();
    assert_eq!(rl.imports, [("bw".to_string(), "log".to_string())]);
    let flood: Vec<PacketRecord> = (0..400)
        .map(|_| PacketRecord {
            in_port: 5,
            protocol: proto::TCP,
            ..Default::default()
        })
        .collect();
    let got = rl.run(&flood);
    let passed = got.iter().filter(|v| v.action == Action::Continue).count();
    assert!(
        (20 + 90..=20 + 100).contains(&passed),
        "passed {passed} of 400"
    );
    assert!(
        got[..20].iter().all(|v| v.action == Action::Continue),
        "the burst passes"
    );
    assert!(got[300..].contains(&VerdictRecord::new(Action::Drop, 1)));
    let logs = rl.logs.lock().unwrap().clone();
    assert_eq!(logs.len(), 1, "one report per storm: {logs:?}");
    assert!(logs[0].contains("ran out"));
    let est = PacketRecord {
        in_port: 5,
        flow_state: FlowState::Established,
        ..Default::default()
    };
    assert_eq!(rl.run(&[est])[0].action, Action::Continue);
}
