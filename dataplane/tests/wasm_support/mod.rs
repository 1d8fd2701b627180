//! Shared helpers of the Wasm host tests: WAT policy templates, records, and a worker-like
//! harness holding the policy in force.
#![allow(dead_code)] // each test file uses a subset

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use dataplane::policy::{Action, MAX_BATCH, PacketRecord, Policy, VerdictRecord};
use dataplane::wasm::swap::{self, SwapReceiver, SwapSender};
use dataplane::wasm::{LoadError, PolicyChain, WasmConfig, WasmRuntime};
use rules_wasm::abi::{FlowState, addr_bytes, proto};

/// Where the template modules put their I/O area.
pub(crate) const IO: u32 = 1024;
/// Guest address of the first verdict.
pub(crate) const VERDICTS: u32 = IO + (MAX_BATCH as u32) * 48;

/// A policy module whose `bw_evaluate` loops over the records; for each one, with `$rec`
/// holding the record's address and `$i` its index, it runs `pre` (statements), then
/// writes `action` and `rule` (i32 expressions). `extra` adds module-level fields.
pub(crate) fn per_record(pre: &str, action: &str, rule: &str, extra: &str) -> Vec<u8> {
    per_record_with(1, IO, pre, action, rule, extra)
}

/// [`per_record`] with a chosen ABI version and I/O area address.
pub(crate) fn per_record_with(
    abi: i32,
    io: u32,
    pre: &str,
    action: &str,
    rule: &str,
    extra: &str,
) -> Vec<u8> {
    let verdicts = io.wrapping_add((MAX_BATCH as u32) * 48);
    let text = format!(
        r#"(module
  {extra}
  (memory (export "memory") 1)
  (func (export "bw_abi_version") (result i32) (i32.const {abi}))
  (func (export "bw_init") (result i32) (i32.const {io}))
  (func (export "bw_evaluate") (param $n i32)
    (local $i i32) (local $rec i32) (local $out i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $rec (i32.add (i32.const {io}) (i32.mul (local.get $i) (i32.const 48))))
        (local.set $out (i32.add (i32.const {verdicts}) (i32.shl (local.get $i) (i32.const 3))))
        {pre}
        (i32.store (local.get $out) {action})
        (i32.store offset=4 (local.get $out) {rule})
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))))"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test WAT: {e}\n{text}"))
}

/// Expression: the record's destination port.
pub(crate) const DST_PORT: &str = "(i32.load16_u offset=34 (local.get $rec))";

/// A module giving every record `action` with rule `rule`.
pub(crate) fn constant(action: Action, rule: u32) -> Vec<u8> {
    per_record(
        "",
        &format!("(i32.const {})", action as u32),
        &format!("(i32.const {rule})"),
        "",
    )
}

/// A module that runs `stmt` when the destination port is `port`, then accepts everything
/// with rule 1: hostile only on a chosen packet, so it passes the load-time probe.
pub(crate) fn hostile_on_port(port: u16, stmt: &str) -> Vec<u8> {
    per_record(
        &format!("(if (i32.eq {DST_PORT} (i32.const {port})) (then {stmt}))"),
        "(i32.const 1)",
        "(i32.const 1)",
        "",
    )
}

/// A TCP SYN from 172.17.0.2 to 172.17.0.3 on `dst_port`.
pub(crate) fn tcp(dst_port: u16) -> PacketRecord {
    PacketRecord {
        src: addr_bytes(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2))),
        dst: addr_bytes(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 3))),
        src_port: 40000,
        dst_port,
        ip_version: 4,
        protocol: proto::TCP,
        tcp_flags: 0x02,
        flow_state: FlowState::New,
        in_port: 1,
        out_port: 2,
        ..PacketRecord::default()
    }
}

/// A runtime with test-sized limits.
pub(crate) fn runtime() -> WasmRuntime {
    runtime_with(|_| {})
}

/// A runtime with the test limits, adjusted by `f`.
pub(crate) fn runtime_with(f: impl FnOnce(&mut WasmConfig)) -> WasmRuntime {
    let mut config = WasmConfig {
        max_memory_bytes: 1 << 20,
        max_module_bytes: 1 << 20,
        ..WasmConfig::default()
    };
    f(&mut config);
    WasmRuntime::new(config).unwrap()
}

/// A worker's view: the policy in force and its swap channel, plus the control end.
pub(crate) struct Harness {
    pub runtime: WasmRuntime,
    pub current: Box<dyn Policy>,
    pub rx: SwapReceiver,
    pub tx: SwapSender,
    next_generation: u64,
}

impl Harness {
    /// A worker whose policy in force is generation 1: accept everything with rule 7.
    pub(crate) fn with_accept_all(runtime: WasmRuntime) -> Self {
        let module = runtime
            .load(&constant(Action::Accept, 7), "old-accept-all")
            .unwrap();
        let chain = PolicyChain::instantiate(1, &[module]).unwrap();
        let (tx, rx) = swap::channel(runtime.reaper());
        Self {
            runtime,
            current: Box::new(chain),
            rx,
            tx,
            next_generation: 2,
        }
    }

    /// What the control thread does for a new single-module policy: load, instantiate,
    /// send. A failure at any step sends nothing.
    pub(crate) fn try_install(&mut self, bytes: &[u8], name: &str) -> Result<u64, LoadError> {
        let module = self.runtime.load(bytes, name)?;
        let generation = self.next_generation;
        let chain = PolicyChain::instantiate(generation, &[module])?;
        self.tx.send(Box::new(chain)).unwrap();
        self.next_generation += 1;
        Ok(generation)
    }

    /// What the worker does per batch: poll for a swap, then decide.
    pub(crate) fn judge(&mut self, records: &[PacketRecord]) -> Vec<VerdictRecord> {
        self.rx.poll_swap(&mut self.current);
        let mut verdicts = vec![VerdictRecord::CONTINUE; records.len()];
        self.current.decide(records, &mut verdicts);
        verdicts
    }

    /// Asserts the old accept-all policy (generation 1) still answers.
    pub(crate) fn assert_old_policy_in_force(&mut self) {
        let verdicts = self.judge(&[tcp(80), tcp(666)]);
        assert_eq!(self.current.generation(), 1, "the policy in force changed");
        for v in verdicts {
            assert_eq!(v, VerdictRecord::new(Action::Accept, 7));
        }
    }
}

/// A policy wrapper recording the name of the thread that drops it.
pub(crate) struct DropProbe<P> {
    pub inner: P,
    pub dropped_on: Arc<Mutex<Option<String>>>,
}

impl<P: Policy> Policy for DropProbe<P> {
    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    fn decide(&mut self, records: &[PacketRecord], verdicts: &mut [VerdictRecord]) {
        self.inner.decide(records, verdicts)
    }
}

impl<P> Drop for DropProbe<P> {
    fn drop(&mut self) {
        let name = std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_string();
        *self.dropped_on.lock().unwrap() = Some(name);
    }
}
