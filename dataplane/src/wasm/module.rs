//! [`PolicyModule`]: a compiled module that passed every load-time check, ready to be
//! instantiated once per worker.
use std::sync::Arc;

use super::limit::{RateLimit, SharedBucket};

use rules_wasm::abi::{
    self, FlowState, MAX_BATCH, PORT_FLOOD, PacketRecord, VerdictRecord, proto, tcp_flags,
};
use wasmtime::{ExternType, FuncType, InstancePre, Module, ValType};

use super::counters::ModuleCounters;
use super::error::LoadError;
use super::hostlog::HostState;
use super::instance::{BatchOutcome, PolicyInstance, WarnGate};
use super::runtime::RuntimeShared;

/// A validated, compiled policy module. Cloning is cheap and clones share counters.
///
/// [`crate::wasm::WasmRuntime::load`] accepts a module only if, in this order:
/// 1. its size is within [`crate::wasm::WasmConfig::max_module_bytes`] (before compiling);
/// 2. wasmtime validates and compiles it;
/// 3. its only import, if any, is `bw.log: (func (param i32 i32))`;
/// 4. it exports `memory` (32-bit, unshared), `bw_abi_version: () -> i32`,
///    `bw_init: () -> i32` and `bw_evaluate: (i32) -> ()`;
/// 5. a scratch instance reports [`abi::ABI_VERSION`], and `bw_init` returns an 8-aligned
///    I/O area inside memory;
/// 6. the scratch instance judges a probe batch of ordinary packets without trapping,
///    running past the deadline or writing an unknown action code — so a module that can
///    only ever fail is refused here and the policy in force stays, rather than being
///    contained at run time.
#[derive(Clone)]
pub struct PolicyModule {
    inner: Arc<ModuleInner>,
}

pub(crate) struct ModuleInner {
    pub(crate) name: Arc<str>,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) runtime: Arc<RuntimeShared>,
    pub(crate) counters: Arc<ModuleCounters>,
    pub(crate) warn: WarnGate,
    size: usize,
    /// Cap on each instance's linear memory (see [`Caps`]).
    pub(crate) max_memory_bytes: usize,
    /// For a rate-limited rule's module: the limit and the bucket every instance shares.
    pub(crate) limit: Option<(RateLimit, Arc<SharedBucket>)>,
}

/// Size caps for one module, when they differ from the runtime's (a compiled policy with a
/// million-entry ipset is a trusted, generated module of a few hundred MB; a user's module
/// keeps [`crate::wasm::WasmConfig`]'s caps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Largest module accepted, in bytes.
    pub max_module_bytes: usize,
    /// Cap on each instance's linear memory, in bytes.
    pub max_memory_bytes: usize,
}

/// wasmtime's refusal as one line a person can read: its chain of causes without the dumps
/// of expected bytes (`magic header not detected: bad magic number - expected=[0x0, …]`).
fn readable(e: &wasmtime::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .split(" - expected=")
        .next()
        .unwrap_or_default()
        .to_string()
}

impl PolicyModule {
    pub(crate) fn load(
        runtime: Arc<RuntimeShared>,
        bytes: &[u8],
        name: &str,
        caps: Option<Caps>,
        limit: Option<RateLimit>,
    ) -> Result<Self, LoadError> {
        let config = &runtime.config;
        let caps = caps.unwrap_or(Caps {
            max_module_bytes: config.max_module_bytes,
            max_memory_bytes: config.max_memory_bytes,
        });
        if bytes.len() > caps.max_module_bytes {
            return Err(LoadError::TooLarge {
                module: name.into(),
                size: bytes.len(),
                cap: caps.max_module_bytes,
            });
        }
        let module =
            Module::from_binary(&runtime.engine, bytes).map_err(|e| LoadError::Invalid {
                module: name.into(),
                reason: readable(&e),
            })?;
        check_imports(&module, name)?;
        check_exports(&module, name)?;
        let pre = runtime
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Invalid {
                module: name.into(),
                reason: format!("{e:#}"),
            })?;
        let warn = WarnGate::new(config.warn_interval);
        let this = Self {
            inner: Arc::new(ModuleInner {
                name: name.into(),
                pre,
                runtime,
                counters: Arc::default(),
                warn,
                size: bytes.len(),
                max_memory_bytes: caps.max_memory_bytes,
                limit: limit.map(|l| (l, SharedBucket::new(&l))),
            }),
        };
        this.probe()?;
        Ok(this)
    }

    /// Runs the probe batch in a scratch instance with private counters, so the module's
    /// real counters start at zero.
    fn probe(&self) -> Result<(), LoadError> {
        let mut scratch = PolicyInstance::new(self.clone(), Arc::default(), false)?;
        let records = probe_records();
        let mut verdicts = [VerdictRecord::CONTINUE; MAX_BATCH];
        let reason = match scratch.evaluate(&records, &mut verdicts) {
            BatchOutcome::Decided => return Ok(()),
            BatchOutcome::TimedOut => "ran past the epoch deadline".to_string(),
            BatchOutcome::Trapped(t) => format!("trapped: {t}"),
            BatchOutcome::BadVerdict { index, code } => {
                format!("wrote unknown action code {code} for record {index}")
            }
            BatchOutcome::Quarantined => "was quarantined".to_string(),
        };
        Err(LoadError::ProbeFailed {
            module: self.name().into(),
            reason,
        })
    }

    /// Makes a fresh instance in its own store (≈ 8 µs). Call it on the control thread,
    /// once per worker; the instance counts into this module's shared counters.
    pub fn instantiate(&self) -> Result<PolicyInstance, LoadError> {
        PolicyInstance::new(self.clone(), Arc::clone(&self.inner.counters), true)
    }

    /// The name given at load, used in every log line and error about the module.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Size of the module's bytes as loaded.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// The counters of every instance of this module (all workers).
    pub fn counters(&self) -> &ModuleCounters {
        &self.inner.counters
    }

    pub(crate) fn inner(&self) -> &ModuleInner {
        &self.inner
    }
}

impl std::fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyModule")
            .field("name", &self.name())
            .field("size", &self.size())
            .finish()
    }
}

fn check_imports(module: &Module, name: &str) -> Result<(), LoadError> {
    let (log_module, log_field) = abi::LOG_IMPORT;
    for import in module.imports() {
        if (import.module(), import.name()) != (log_module, log_field) {
            return Err(LoadError::ForbiddenImport {
                module: name.into(),
                import_module: import.module().into(),
                field: import.name().into(),
            });
        }
        let ok = match import.ty() {
            ExternType::Func(f) => func_is(&f, &[ValType::I32, ValType::I32], &[]),
            _ => false,
        };
        if !ok {
            return Err(LoadError::WrongImportType {
                module: name.into(),
                found: describe(&import.ty()),
            });
        }
    }
    Ok(())
}

fn check_exports(module: &Module, name: &str) -> Result<(), LoadError> {
    let find = |export: &'static str| {
        module
            .get_export(export)
            .ok_or_else(|| LoadError::MissingExport {
                module: name.into(),
                export,
            })
    };
    let wrong = |export: &'static str, expected: &'static str, ty: &ExternType| {
        LoadError::WrongExportType {
            module: name.into(),
            export,
            expected,
            found: describe(ty),
        }
    };

    let memory = find(abi::EXPORT_MEMORY)?;
    const MEMORY: &str = "a 32-bit, unshared memory";
    match &memory {
        ExternType::Memory(m) if !m.is_64() && !m.is_shared() => {}
        other => return Err(wrong(abi::EXPORT_MEMORY, MEMORY, other)),
    }
    let funcs: [(&'static str, &[ValType], &[ValType], &'static str); 3] = [
        (
            abi::EXPORT_ABI_VERSION,
            &[],
            &[ValType::I32],
            "(func (result i32))",
        ),
        (
            abi::EXPORT_INIT,
            &[],
            &[ValType::I32],
            "(func (result i32))",
        ),
        (
            abi::EXPORT_EVALUATE,
            &[ValType::I32],
            &[],
            "(func (param i32))",
        ),
    ];
    for (export, params, results, expected) in funcs {
        let ty = find(export)?;
        match &ty {
            ExternType::Func(f) if func_is(f, params, results) => {}
            other => return Err(wrong(export, expected, other)),
        }
    }
    Ok(())
}

/// Whether `f` has exactly these (numeric) parameter and result types.
fn func_is(f: &FuncType, params: &[ValType], results: &[ValType]) -> bool {
    let same = |a: ValType, b: &ValType| a.is_i32() && b.is_i32();
    f.params().len() == params.len()
        && f.results().len() == results.len()
        && f.params().zip(params).all(|(a, b)| same(a, b))
        && f.results().zip(results).all(|(a, b)| same(a, b))
}

/// A short human description of an import or export type for error messages.
fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => {
            let list = |it: &mut dyn Iterator<Item = ValType>| {
                it.map(|v| v.to_string()).collect::<Vec<_>>().join(" ")
            };
            format!(
                "(func (param {}) (result {}))",
                list(&mut f.params()),
                list(&mut f.results())
            )
        }
        ExternType::Memory(m) => format!(
            "a {}{} memory",
            if m.is_64() { "64-bit" } else { "32-bit" },
            if m.is_shared() { ", shared" } else { "" }
        ),
        ExternType::Global(_) => "a global".into(),
        ExternType::Table(_) => "a table".into(),
        ExternType::Tag(_) => "a tag".into(),
    }
}

/// The load-time probe: a full batch of ordinary packets of every kind the dataplane hands
/// a policy (TCP SYN and established, UDP, ICMP, IPv6, ARP, flooded), deterministic.
fn probe_records() -> [PacketRecord; MAX_BATCH] {
    let mut out = [PacketRecord::default(); MAX_BATCH];
    for (i, r) in out.iter_mut().enumerate() {
        let b = i as u8;
        let v4 = |last: u8| {
            abi::addr_bytes(core::net::IpAddr::V4(core::net::Ipv4Addr::new(
                172, 17, 0, last,
            )))
        };
        *r = match i % 6 {
            0 | 1 => PacketRecord {
                src: v4(2 + b % 8),
                dst: v4(3 + b % 8),
                src_port: 40_000 + u16::from(b),
                dst_port: [80, 443, 53, 8080][i % 4],
                ip_version: 4,
                protocol: proto::TCP,
                tcp_flags: if i % 6 == 0 {
                    tcp_flags::SYN
                } else {
                    tcp_flags::ACK
                },
                flow_state: if i % 6 == 0 {
                    FlowState::New
                } else {
                    FlowState::Established
                },
                in_port: 1 + u16::from(b % 4),
                out_port: 2 + u16::from(b % 4),
                ..PacketRecord::default()
            },
            2 => PacketRecord {
                src: v4(2),
                dst: v4(1),
                src_port: 5353,
                dst_port: 53,
                ip_version: 4,
                protocol: proto::UDP,
                in_port: 1,
                out_port: 0,
                ..PacketRecord::default()
            },
            3 => PacketRecord {
                src: v4(4),
                dst: v4(5),
                ip_version: 4,
                protocol: proto::ICMP,
                icmp_type: 8,
                in_port: 2,
                out_port: 3,
                ..PacketRecord::default()
            },
            4 => PacketRecord {
                src: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2 + b],
                dst: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
                src_port: 50_000,
                dst_port: 22,
                ip_version: 6,
                protocol: proto::TCP,
                tcp_flags: tcp_flags::SYN,
                in_port: 3,
                out_port: 1,
                ..PacketRecord::default()
            },
            _ => PacketRecord {
                in_port: 1,
                out_port: PORT_FLOOD,
                ..PacketRecord::default()
            },
        };
    }
    out
}
