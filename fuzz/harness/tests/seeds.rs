//! Writes the seed inputs each target's corpus started from, into `fuzz/corpus/<target>/`
//! as `seed-*` files: `cargo test --manifest-path fuzz/harness/Cargo.toml --test seeds --
//! --ignored`. Not run by default: the kept corpus already holds the seeds (and what the
//! fuzzer grew from them); this is how they were made.
use std::fs;
use std::path::{Path, PathBuf};

use bridgewall_fuzz_harness::Rng;
use bridgewall_fuzz_harness::iptables::FuzzNames;
use rules_wasm::abi::Action;
use rules_wasm::compiler::compile;
use rules_wasm::iptables::parse_full;
use rules_wasm::model::RuleSet;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target)
}

fn write(target: &str, seeds: &[Vec<u8>]) {
    let dir = corpus(target);
    fs::create_dir_all(&dir).unwrap();
    for (i, s) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("seed-{i:03}")), s).unwrap();
    }
}

fn eth(ethertype: u16, vlan: bool) -> Vec<u8> {
    let mut f = vec![
        0x02, 0x42, 0xac, 0x11, 0x00, 0x03, 0x02, 0x42, 0xac, 0x11, 0x00, 0x02,
    ];
    if vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0x12, 0x34, 0, 0, 64, proto, 0, 0, 172, 17, 0, 2, 172, 17, 0, 3,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0, 0, 0, next, 64];
    ip[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    ip.extend_from_slice(payload);
    ip
}

fn tcp(flags: u8) -> Vec<u8> {
    let mut t = vec![
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff,
    ];
    t.extend_from_slice(&[0, 0, 0, 0, b'h', b'i']);
    t
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0x14, 0xe9, 0x00, 0x35, 0, 0, 0, 0];
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

fn frames() -> Vec<Vec<u8>> {
    let echo = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    let mut unreach = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    unreach.extend_from_slice(&ipv4(17, 0, &udp(b"")));
    let mut unreach6 = vec![1u8, 4, 0, 0, 0, 0, 0, 0];
    unreach6.extend_from_slice(&ipv6(6, &tcp(0x02)));
    let mut hop_frag = vec![44u8, 0, 0, 0, 0, 0, 0, 0]; // hop-by-hop, then a fragment header
    hop_frag.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 7]); // first fragment, more follow
    hop_frag.extend_from_slice(&udp(b"abcd"));
    let arp = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0x42, 0xac, 0x11, 0, 2, 172, 17, 0, 2, 0, 0, 0, 0, 0, 0, 172,
        17, 0, 1,
    ];
    let cat = |a: Vec<u8>, b: &[u8]| [a, b.to_vec()].concat();
    vec![
        cat(eth(0x0800, false), &ipv4(6, 0, &tcp(0x02))),
        cat(eth(0x0800, true), &ipv4(6, 0, &tcp(0x12))),
        cat(eth(0x0800, false), &ipv4(17, 0, &udp(b"query"))),
        cat(eth(0x0800, false), &ipv4(1, 0, &echo)),
        cat(eth(0x0800, false), &ipv4(1, 0, &unreach)),
        cat(eth(0x0800, false), &ipv4(17, 0x2000, &udp(b"first"))),
        cat(eth(0x0800, false), &ipv4(17, 0x0001, b"later-fragment")),
        cat(eth(0x86dd, false), &ipv6(6, &tcp(0x02))),
        cat(eth(0x86dd, false), &ipv6(0, &hop_frag)),
        cat(eth(0x86dd, false), &ipv6(58, &[128, 0, 0, 0, 0, 7, 0, 1])),
        cat(eth(0x86dd, false), &ipv6(58, &unreach6)),
        cat(eth(0x86dd, false), &ipv6(58, &[135, 0, 0, 0, 0, 0, 0, 0])),
        cat(eth(0x0806, false), &arp),
        cat(eth(0x88cc, false), b"lldp"),
        cat(eth(0x8100, true), b"stacked"),
    ]
}

const RULES: &[&str] = &[
    "-A -s 10.0.0.1 -j DROP",
    "-I DOCKER-USER -i eth0 ! -s 192.168.1.0/24 -j DROP",
    "-N mine\n-A mine -p tcp --dport 22 -j RETURN\n-A mine -j DROP\n-A DOCKER-USER -d web -j mine",
    "*filter\n:DOCKER-USER - [0:0]\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -s 10.1.0.0/16 -p udp -m multiport --dports 53,123:125 -j ACCEPT\n-A DOCKER-USER -j RETURN\nCOMMIT\n*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT",
    "# ip6tables-save\n*filter\n-A DOCKER-USER -s fd00::/8 -p icmpv6 --icmpv6-type echo-request -j ACCEPT\nCOMMIT",
    "-A -p tcp --tcp-flags SYN,ACK SYN -m connlimit --connlimit-above 10 -j REJECT --reject-with tcp-reset",
    "-A -p tcp --syn -m limit --limit 5/s --limit-burst 10 -j ACCEPT\n-A -j LOG --log-prefix \"dropped: \"\n-A -j DROP",
    "-A -m iprange --src-range 10.0.0.1-10.0.1.7 -m conntrack ! --ctstate NEW,INVALID -j ACCEPT",
    "-A -m set --match-set blocked src -j DROP\0create blocked hash:ip family inet\nadd blocked 198.51.100.7\nadd blocked 203.0.113.0/24",
    "-A -m set ! --match-set pairs src,dst -j REJECT\0create pairs hash:ip,port family inet\nadd pairs 10.0.0.1,tcp:80",
    "-A -m mac --mac-source 02:42:ac:11:00:02 -o docker0 -j DROP",
    "-A -p tcp -m conntrack --ctorigdst 192.0.2.10 --ctorigdstport 8080 --ctdir ORIGINAL -j ACCEPT",
    "-A -p icmp --icmp-type 3/4 -j ACCEPT\n-A -p icmp -m icmp --icmp-type echo-request -j DROP",
    "iptables -A DOCKER-USER -ptcp --dport=80:90 -m comment --comment 'two words' -j ACCEPT",
    "-A -i + -o web -j ACCEPT\n-A -i eth1 -j DROP",
];

const CONTROL: &[&[u8]] = &[
    b"\x00{\"op\":\"append\",\"spec\":[\"-s\",\"10.0.0.1\",\"-j\",\"DROP\"],\"chain\":null}\x00-I -s 10.0.0.2 -j DROP\n",
    b"\x00{\"op\":\"insert\",\"spec\":[\"-m\",\"comment\",\"--comment\",\"two words\",\"-j\",\"ACCEPT\"],\"chain\":\"DOCKER-USER\",\"position\":2}\x00*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -j RETURN\nCOMMIT\n",
    b"\x00{\"op\":\"delete\",\"spec\":[\"-p\",\"tcp\",\"--dport\",\"80\",\"-j\",\"ACCEPT\"],\"chain\":null}\x00# mine\niptables -A DOCKER-USER -p tcp --dport 80 -j ACCEPT\n",
    b"\x00{\"op\":\"delete_line\",\"line\":2}\x00# mine\n-I -s 10.0.0.1 -j DROP\n",
    b"\x01{\"src\":\"web\",\"dst\":\"10.0.0.1\",\"proto\":\"tcp\",\"dport\":80,\"fragment\":false}",
    b"\x02{\"audit\":true}",
    b"\x03port=web&count=10&snaplen=128&timeout_ms=1000",
    b"\x03{\"port\":\"gateway\",\"count\":1,\"snaplen\":65535,\"timeout_ms\":0}",
    b"\x04drops=true&container=web",
    b"\x04{\"drops\":false,\"container\":null}",
    b"\x05name=policy.wasm&audit=true",
    b"\x06\x03\x01\x07\x00\x02\x05\x01\x0c\x02\x00\x11\x04",
    b"\x07\x00\x01\x00\x05\x09\x0e\x0f\x01\x02\x01\x02",
];

fn lab() -> Vec<Vec<u8>> {
    let walkthrough = include_str!("../../../examples/lab/walkthrough.toml");
    let small = "[bridge]\nsubnet = \"10.8.0.0/24\"\ngateway = \"10.8.0.1\"\n\n[[container]]\nname = \"a\"\nip = \"10.8.0.2\"\npublish = [\"80:8080\"]\n\n[[container]]\nname = \"b\"\nip = \"10.8.0.3\"\nlink = [\"a:alias\"]\nexpose = [\"53/udp\"]\n\n[[step]]\nfrom = \"b\"\nto = \"alias\"\nproto = \"udp\"\nport = 53\nexpect = \"pass\"\n";
    vec![walkthrough.as_bytes().to_vec(), small.as_bytes().to_vec()]
}

fn modules() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out = Vec::new();
    let with_mode = |m: u8, b: &[u8]| [&[m][..], b].concat();
    for text in [RULES[1], RULES[2], RULES[5], RULES[7]] {
        let p = parse_full(text, None, &FuzzNames).unwrap();
        let set = RuleSet::new(p.rules, 1, Action::Continue);
        out.push(with_mode(0, &compile(&set).unwrap().wasm));
    }
    let empty = RuleSet::new(vec![], 1, Action::Drop);
    out.push(with_mode(0, &compile(&empty).unwrap().wasm));
    let wat = fs::read_to_string(root.join("rules-wasm/examples/wat/drop-icmp-echo.wat")).unwrap();
    out.push(with_mode(0, &wat::parse_str(&wat).unwrap()));
    for f in ["dns-only.wasm", "conn-rate-limit.wasm"] {
        if let Ok(b) = fs::read(root.join("rules-wasm/examples/out").join(f)) {
            out.push(with_mode(0, &b));
        }
    }
    let mut rng = Rng(7);
    for _ in 0..4 {
        let b: Vec<u8> = (0..512).map(|_| rng.next_u64() as u8).collect();
        out.push(with_mode(1, &b));
    }
    out
}

#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seeds() {
    write("wire_parse", &frames());
    let idioms = include_str!("../../../rules-wasm/tests/data/docker-user-idioms.rules");
    let mut rules: Vec<Vec<u8>> = RULES.iter().map(|r| r.as_bytes().to_vec()).collect();
    rules.push(idioms.as_bytes().to_vec());
    rules.extend(
        idioms
            .lines()
            .filter(|l| l.starts_with('-'))
            .map(|l| l.as_bytes().to_vec()),
    );
    write("iptables_parse", &rules);
    write("wasm_load", &modules());
    write("lab_toml", &lab());
    write(
        "control_request",
        &CONTROL.iter().map(|c| c.to_vec()).collect::<Vec<_>>(),
    );
    let mut rng = Rng(11);
    let blobs: Vec<Vec<u8>> = (0..8)
        .map(|i| (0..64 * (i + 1)).map(|_| rng.next_u64() as u8).collect())
        .collect();
    write("policy_differential", &blobs);
}
