//! Example policy: one container may only talk DNS (UDP and TCP port 53) to one other
//! container; everything else it sends is dropped. Traffic not from it gets `Continue`, so
//! the next module (the compiled Docker policy) decides.
//!
//! Containers are identified by address, which is what a policy author knows from
//! `docker inspect`; edit the constants and rebuild (`../build.sh`).
#![no_std]

use core::net::Ipv4Addr;

use rules_wasm::abi::{Action, PacketRecord, VerdictRecord, addr_bytes, proto};

/// The confined container.
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
/// The only peer it may reach: its DNS server.
const RESOLVER: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 3);
/// Rule ids this module reports, for traces and counters.
const RULE_DNS_ALLOWED: u32 = 1;
const RULE_CONFINED: u32 = 2;

fn decide(r: &PacketRecord) -> VerdictRecord {
    // Non-IP frames (ARP) carry no addresses here; the confined container still needs them.
    if r.ip_version != 4 || r.src != addr_bytes(core::net::IpAddr::V4(CLIENT)) {
        return VerdictRecord::CONTINUE;
    }
    let dns = matches!(r.protocol, proto::UDP | proto::TCP) && r.dst_port == 53;
    if dns && r.dst == addr_bytes(core::net::IpAddr::V4(RESOLVER)) {
        VerdictRecord::new(Action::Accept, RULE_DNS_ALLOWED)
    } else {
        VerdictRecord::new(Action::Drop, RULE_CONFINED)
    }
}

rules_wasm::bw_policy!(decide);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
