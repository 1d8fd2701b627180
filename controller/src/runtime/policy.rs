//! From a bridge state and the user's rules to a loaded policy module, and back from a
//! verdict to the rule that gave it.
//!
//! One [`PolicyBuild`] is compiled and loaded once on the control thread; every worker then
//! gets its own instance of it ([`PolicyBuild::instances`]), since a Wasm store is
//! single-threaded. The same build answers traces, through the plain-Rust reference
//! interpreter and through a fresh instance of the very module the workers run, so a trace
//! can say both which rule decides and that the dataplane's module agrees.
use std::net::IpAddr;
use std::sync::Arc;

use dataplane::wasm::{
    Caps, LoadError, LogSpec, PolicyChain, PolicyModule, RateLimit, TraceResult, WasmRuntime,
    trace_fresh,
};
use rules_wasm::abi::{
    Action, FlowState, PacketRecord, RULE_NONE, RejectWith, addr_bytes, proto, tcp_flags,
};
use rules_wasm::compiler::{CompileError, CompiledPolicy, compile};
use rules_wasm::docker::{PortId, docker_ruleset};
use rules_wasm::iptables::{LimitRule, LogRule, ParseError, Warning, parse_full};
use rules_wasm::model::{Chain, RuleSet, Target};
use rules_wasm::reference;

use crate::runtime::host::HostView;
use crate::state::HostState;

/// Why a policy could not be built. The policy in force stays in force.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A user rule was rejected (the error names the line and token).
    #[error("user rules ({origin}): {error}")]
    Rules {
        /// Where the rules came from (a file name).
        origin: String,
        /// The parser's complaint (in the message, so not also a `source()`).
        error: ParseError,
    },
    /// The compiler refused the rule set.
    #[error("compiling the policy: {0}")]
    Compile(#[from] CompileError),
    /// wasmtime refused the module or an instance of it.
    #[error("loading the compiled policy: {0}")]
    Load(#[from] LoadError),
    /// A user policy module could not be read.
    #[error("policy module {path}: {source}")]
    ModuleFile {
        /// The file.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A module file in the WebAssembly text format that does not parse.
    #[error("policy module {path}: not valid WebAssembly text: {reason}")]
    ModuleText {
        /// The file.
        path: String,
        /// The first line of the `wat` parser's explanation (it names line and column).
        reason: String,
    },
    /// wasmtime (or the ABI check) refused a user policy module.
    #[error("{}", module_message(path, error))]
    Module {
        /// The file.
        path: String,
        /// What is wrong with it (missing export, forbidden import, ABI version, …).
        error: LoadError,
    },
}

/// wasmtime's refusal names the module by its file name; the path is added when it says
/// more (a directory).
fn module_message(path: &str, error: &LoadError) -> String {
    if module_name(path) == path {
        error.to_string()
    } else {
        format!("{error} (file {path})")
    }
}

/// The user's own policy modules (`--module FILE.wasm`), in the order given: they run before
/// the compiled Docker policy, which decides whatever they leave (`Continue`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserModules {
    /// (file name, module bytes, audit only).
    files: Vec<(String, Vec<u8>, bool)>,
}

/// A user module loaded, with how it runs.
#[derive(Clone, Debug)]
pub struct LoadedModule {
    /// The module, compiled by wasmtime.
    pub module: PolicyModule,
    /// Audit only: its verdicts are counted, never enforced (the rest of the chain decides).
    pub audit: bool,
    /// Its size in bytes (binary form).
    pub bytes: usize,
}

impl UserModules {
    /// Reads the modules' bytes; an unreadable file is an error naming it. A file in the
    /// WebAssembly text format (`.wat`, or any file not starting with Wasm's magic bytes) is
    /// compiled to the binary format here, so `--module policy.wat` works as `.wasm` does.
    pub fn from_files(paths: &[std::path::PathBuf]) -> Result<UserModules, PolicyError> {
        let mut m = UserModules::default();
        for p in paths {
            m.add_file(p, false)?;
        }
        Ok(m)
    }

    /// Adds the module in file `p` at the end of the chain; `audit`: counted, not enforced.
    pub fn add_file(&mut self, p: &std::path::Path, audit: bool) -> Result<(), PolicyError> {
        let path = p.display().to_string();
        let bytes = std::fs::read(p).map_err(|source| PolicyError::ModuleFile {
            path: path.clone(),
            source,
        })?;
        self.add_bytes(&path, bytes, audit)
    }

    /// Adds a module given as bytes (binary or text format) under `name`.
    pub fn add_bytes(
        &mut self,
        name: &str,
        bytes: Vec<u8>,
        audit: bool,
    ) -> Result<(), PolicyError> {
        let bytes = to_binary(name, bytes)?;
        self.files.push((name.to_string(), bytes, audit));
        Ok(())
    }

    /// Removes the module called `name` (its file name); whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.files.len();
        self.files.retain(|(path, _, _)| module_name(path) != name);
        self.files.len() != before
    }

    /// Whether a module called `name` is among them.
    pub fn contains(&self, name: &str) -> bool {
        self.files
            .iter()
            .any(|(path, _, _)| module_name(path) == name)
    }

    /// Compiles and checks every module once (ABI version, exports, imports, a probe batch);
    /// the first one refused is an error naming its file and what is wrong.
    pub fn load(&self, wasm: &WasmRuntime) -> Result<Vec<LoadedModule>, PolicyError> {
        self.files
            .iter()
            .map(|(path, bytes, audit)| {
                let module =
                    wasm.load(bytes, &module_name(path))
                        .map_err(|error| PolicyError::Module {
                            path: path.clone(),
                            error,
                        })?;
                Ok(LoadedModule {
                    module,
                    audit: *audit,
                    bytes: bytes.len(),
                })
            })
            .collect()
    }
}

/// A module's name: its file name.
pub fn module_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned())
}

/// Wasm's magic bytes: what a binary module starts with.
const WASM_MAGIC: &[u8] = b"\0asm";

/// `bytes` as a binary module: as they are, or compiled from the text format.
fn to_binary(path: &str, bytes: Vec<u8>) -> Result<Vec<u8>, PolicyError> {
    if bytes.starts_with(WASM_MAGIC) {
        return Ok(bytes);
    }
    wat::parse_bytes(&bytes)
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| PolicyError::ModuleText {
            path: path.to_string(),
            reason: one_line(&e.to_string()),
        })
}

/// A multi-line message (a parser's excerpt of the source, wasmtime's chain of causes) as
/// one readable line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| matches!(c, '|' | '^' | '-' | ' ')))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The user's rules as text, with where they came from (for error messages).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserRules {
    /// iptables-syntax lines or `iptables-save` output; blank lines and `#` comments are
    /// ignored by the parser.
    pub text: String,
    /// A file name, or e.g. "the lab file".
    pub origin: String,
    /// `ipset save` output defining the sets `-m set` names (sets may also be in `text`).
    pub ipsets: Option<String>,
}

impl UserRules {
    /// Rules from lines (e.g. a lab file's `rules = [...]`).
    pub fn from_lines(lines: &[String], origin: &str) -> UserRules {
        UserRules {
            text: lines.join("\n"),
            origin: origin.to_string(),
            ipsets: None,
        }
    }

    /// Number of lines that add a rule (`-A`, `-I`, or a bare rule line), whatever chain they
    /// name: what a person counts in the file. How many of them apply (Docker's own chains are
    /// skipped on import) and what they expand to, the built policy says.
    pub fn count(&self) -> usize {
        self.text
            .lines()
            .map(|l| {
                let t = l.trim_start();
                let t = if t.starts_with('[') {
                    t.split_once(' ').map_or("", |x| x.1)
                } else {
                    t
                };
                t.strip_prefix("ip6tables ")
                    .or_else(|| t.strip_prefix("iptables "))
                    .unwrap_or(t)
                    .trim_start()
            })
            .filter(|t| t.starts_with('-') && !t.starts_with("-N") && !t.starts_with("--new-chain"))
            .count()
    }
}

/// A compiled, loaded policy and what explains its verdicts.
#[derive(Clone, Debug)]
pub struct PolicyBuild {
    /// The generation workers report; flows decided by another one are re-decided.
    pub generation: u64,
    /// The rules, in evaluation order (`rules[id]`).
    pub ruleset: RuleSet,
    /// The compiler's output (module bytes, rule origins, sizes).
    pub compiled: CompiledPolicy,
    /// The module, compiled by wasmtime; each worker instantiates it.
    pub module: PolicyModule,
    /// The user's own modules, run before `module` (loaded once, shared by every build).
    pub user_modules: Vec<LoadedModule>,
    /// Per flat user rule (the first rules of `ruleset`): the line of the rules text.
    pub user_lines: Vec<usize>,
    /// What the rules were accepted with a caveat for (Docker's chains skipped on import, a
    /// chain nothing jumps to), for the person running bridgewall.
    pub warnings: Vec<Warning>,
    /// The user's `-j LOG` rules, each a module run beside the policy (see
    /// [`dataplane::wasm::PolicyChain::instantiate_observed`]).
    pub logs: Vec<LogModule>,
    /// The user's rate-limited deciding rules, each a module run before `module` (see
    /// [`dataplane::wasm::RateLimit`]).
    pub limits: Vec<LimitModule>,
}

/// One rate-limited deciding rule as the workers run it.
#[derive(Clone, Debug)]
pub struct LimitModule {
    /// The rule's line.
    pub origin: String,
    /// First match `Accept` = the packet reached the rule and matched it.
    pub ruleset: RuleSet,
    /// The compiled rule set, loaded with its shared token bucket.
    pub module: PolicyModule,
    /// What it decides within the rate.
    pub limit: RateLimit,
}

/// One `-j LOG` rule as the workers run it.
#[derive(Clone, Debug)]
pub struct LogModule {
    /// `--log-prefix`.
    pub prefix: Arc<str>,
    /// The rule's line.
    pub origin: String,
    /// First match `Accept` = the packet reached the LOG rule.
    pub ruleset: RuleSet,
    /// The compiled rule set, loaded.
    pub module: PolicyModule,
    /// `-m limit`: (lines a second, burst).
    pub limit: Option<(f64, u32)>,
    /// Rate-limited rules before it (their decisions mean the LOG rule was not reached).
    pub limits_before: usize,
}

/// Size caps of the compiled policy module: its data grows with the rules and sets (about
/// 190 bytes per flat rule), so room for a few million.
pub const COMPILED_POLICY_CAPS: Caps = Caps {
    max_module_bytes: 1 << 30,
    max_memory_bytes: 1 << 30,
};

/// Compiles `state` plus `user` into a loaded module of generation `generation`. User rules
/// are re-parsed against the current containers and the host's routes (`host`), since they
/// may name containers and host interfaces.
pub fn build(
    wasm: &WasmRuntime,
    state: &HostState,
    host: &HostView,
    user: &UserRules,
    user_modules: &[LoadedModule],
    generation: u64,
) -> Result<PolicyBuild, PolicyError> {
    let networks = state.policy_input();
    let parsed = parse_full(&user.text, user.ipsets.as_deref(), &host.names(&networks)).map_err(
        |error| PolicyError::Rules {
            origin: user.origin.clone(),
            error,
        },
    )?;
    let user_lines = parsed.lines;
    let ruleset = docker_ruleset(&networks, parsed.rules, generation);
    let logs = parsed
        .logs
        .into_iter()
        .enumerate()
        .map(|(i, l)| log_module(wasm, l, generation, i))
        .collect::<Result<Vec<_>, _>>()?;
    let limits = parsed
        .limits
        .into_iter()
        .enumerate()
        .map(|(i, l)| limit_module(wasm, l, generation, i))
        .collect::<Result<Vec<_>, _>>()?;
    let compiled = compile(&ruleset)?;
    let st = &compiled.stats;
    // Once per policy build (container events), never per packet. `inlined = false` or a
    // classification below `Full` means this rule set costs more per new flow.
    tracing::debug!(
        generation,
        rules = st.rules,
        shapes = st.shapes,
        classes = st.classes,
        programs = st.programs,
        inlined = st.inlined,
        classify = ?st.classify,
        module_bytes = compiled.wasm.len(),
        "policy compiled"
    );
    // The compiled policy is ours and grows with the user's sets (a million-entry ipset is
    // ~180 MB): it gets room for that, while users' own modules keep the runtime's caps.
    let module = wasm.load_with_caps(
        &compiled.wasm,
        &format!("docker-policy-g{generation}"),
        COMPILED_POLICY_CAPS,
    )?;
    Ok(PolicyBuild {
        generation,
        ruleset,
        compiled,
        module,
        user_modules: user_modules.to_vec(),
        user_lines,
        warnings: parsed.warnings,
        logs,
        limits,
    })
}

/// Compiles and loads one rate-limited rule's rule set. The user rules come first in the
/// policy's rule set, so the rule's flat index is its id there.
fn limit_module(
    wasm: &WasmRuntime,
    rule: LimitRule,
    generation: u64,
    index: usize,
) -> Result<LimitModule, PolicyError> {
    let ruleset = RuleSet::new(rule.rules, generation, Action::Continue);
    let compiled = compile(&ruleset)?;
    let (action, reject) = match rule.target {
        Target::Reject(w) => (Action::Reject, w),
        t => (t.action(), RejectWith::default()),
    };
    let limit = RateLimit {
        per_second: rule.per_second,
        burst: rule.burst,
        verdict: dataplane::wasm::limit::limited_verdict(action, rule.first as u32, reject),
    };
    let module = wasm.load_limited(
        &compiled.wasm,
        &format!("limit-{index}-g{generation}"),
        COMPILED_POLICY_CAPS,
        limit,
    )?;
    Ok(LimitModule {
        origin: rule.origin,
        ruleset,
        module,
        limit,
    })
}

/// Compiles and loads one LOG rule's rule set.
fn log_module(
    wasm: &WasmRuntime,
    log: LogRule,
    generation: u64,
    index: usize,
) -> Result<LogModule, PolicyError> {
    let ruleset = RuleSet::new(log.rules, generation, Action::Continue);
    let compiled = compile(&ruleset)?;
    let module = wasm.load_with_caps(
        &compiled.wasm,
        &format!("log-{index}-g{generation}"),
        COMPILED_POLICY_CAPS,
    )?;
    Ok(LogModule {
        prefix: Arc::from(log.prefix.as_str()),
        origin: log.origin,
        ruleset,
        module,
        limit: log.limit,
        limits_before: log.limits_before,
    })
}

/// What one described packet gets, from both evaluators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceAnswer {
    /// The packet asked about.
    pub record: PacketRecord,
    /// The compiled module's answer (a fresh instance of the module the workers run).
    pub compiled: TraceResult,
    /// The reference interpreter's action.
    pub reference_action: Action,
    /// The reference interpreter's rule ([`RULE_NONE`]: the default decided).
    pub reference_rule: u32,
    /// The action the packet finally gets (the rule set's default when nothing matched).
    pub action: Action,
    /// The deciding rule's chain, `None` when the default decided.
    pub chain: Option<Chain>,
    /// The deciding rule's text ("-I -s … -j DROP", "link web→db 80/tcp"), or the default.
    pub origin: String,
    /// A user module decided: the reference interpreter (which knows only the rule model)
    /// was not consulted, and `reference_*` repeat the module's answer.
    pub by_user_module: bool,
}

impl TraceAnswer {
    /// Whether the compiled module and the reference interpreter gave the same verdict.
    pub fn agree(&self) -> bool {
        self.compiled.rule_id == self.reference_rule
            && (self.compiled.action == self.reference_action
                || (self.compiled.action == Action::Continue && self.reference_rule == RULE_NONE))
    }

    /// "accept" / "drop" / "reject", for people.
    pub fn verdict(&self) -> &'static str {
        action_name(self.action)
    }
}

/// A lower-case name for an action.
pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Accept => "accept",
        Action::Drop => "drop",
        Action::Reject => "reject",
        Action::Continue => "continue",
    }
}

/// One packet to trace, described the way people think of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSpec {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (6 TCP, 17 UDP, 1 ICMP).
    pub protocol: u8,
    /// Destination port (0 for ICMP).
    pub dst_port: u16,
    /// Dataplane port it comes in on.
    pub in_port: PortId,
    /// Dataplane port it leaves on.
    pub out_port: PortId,
}

impl PacketSpec {
    /// The first packet of the flow as the engine would hand it to the policy.
    pub fn record(&self) -> PacketRecord {
        PacketRecord {
            src: addr_bytes(self.src),
            dst: addr_bytes(self.dst),
            src_port: if self.protocol == proto::ICMP {
                0
            } else {
                40000
            },
            dst_port: self.dst_port,
            ip_version: if self.src.is_ipv4() { 4 } else { 6 },
            protocol: self.protocol,
            tcp_flags: if self.protocol == proto::TCP {
                tcp_flags::SYN
            } else {
                0
            },
            flow_state: FlowState::New,
            in_port: self.in_port,
            out_port: self.out_port,
            icmp_type: if self.protocol == proto::ICMP { 8 } else { 0 },
            icmp_code: 0,
            src_conns: 0,
        }
    }
}

impl PolicyBuild {
    /// The chain every worker runs: the user's modules, then the compiled Docker policy.
    pub fn chain(&self) -> Vec<PolicyModule> {
        let mut all: Vec<PolicyModule> =
            self.user_modules.iter().map(|m| m.module.clone()).collect();
        all.extend(self.limits.iter().map(|l| l.module.clone()));
        all.push(self.module.clone());
        all
    }

    /// `n` fresh chains, one per worker, with the LOG rules beside them.
    pub fn instances(&self, n: usize) -> Result<Vec<PolicyChain>, LoadError> {
        let chain = self.chain();
        let observers: Vec<LogSpec> = self
            .logs
            .iter()
            .map(|l| LogSpec {
                module: l.module.clone(),
                prefix: Arc::clone(&l.prefix),
                limit: l.limit,
                // Stages: the user's modules, then the rate-limited rules, then the policy.
                decided_before: u16::try_from(self.user_modules.len() + l.limits_before)
                    .unwrap_or(u16::MAX),
            })
            .collect();
        // Counting a source's connections walks its flows on every new flow: only when a
        // rule asks (connlimit) or a user's module might read the count.
        let counts = !self.user_modules.is_empty()
            || std::iter::once(&self.ruleset)
                .chain(self.limits.iter().map(|l| &l.ruleset))
                .chain(self.logs.iter().map(|l| &l.ruleset))
                .any(|set| set.rules.iter().any(|r| r.m.conns.is_some()));
        (0..n)
            .map(|_| {
                let mut c = PolicyChain::instantiate_observed(self.generation, &chain, &observers)?;
                c.set_counts_source_conns(counts);
                for (stage, m) in self.user_modules.iter().enumerate() {
                    c.set_audit(stage, m.audit);
                }
                Ok(c)
            })
            .collect()
    }

    /// The LOG rules `record` reaches (their lines), by the reference interpreter, with every
    /// rate-limited rule within its rate.
    pub fn logged(&self, record: &PacketRecord) -> Vec<&str> {
        let first_limited = self
            .limits
            .iter()
            .position(|l| reference::evaluate(&l.ruleset, record).action == Action::Accept);
        self.logs
            .iter()
            .filter(|l| first_limited.is_none_or(|k| l.limits_before <= k))
            .filter(|l| reference::evaluate(&l.ruleset, record).action == Action::Accept)
            .map(|l| l.origin.as_str())
            .collect()
    }

    /// The text of rule `id` (the user's line, or what Docker state it stands for).
    pub fn origin(&self, id: u32) -> String {
        if id == RULE_NONE {
            return format!(
                "no rule matched: default {}",
                action_name(self.ruleset.default)
            );
        }
        self.compiled
            .rule_origins
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| format!("rule {id}"))
    }

    /// Which module and rule decide `packet`: through fresh instances of the chain the workers
    /// run, and — when the compiled Docker policy decides — also by the reference interpreter.
    pub fn trace(&self, packet: &PacketSpec) -> Result<TraceAnswer, LoadError> {
        let record = packet.record();
        // An audited module never decides: the chain the trace walks leaves it out.
        let enforcing: Vec<PolicyModule> = self
            .user_modules
            .iter()
            .filter(|m| !m.audit)
            .map(|m| m.module.clone())
            .collect();
        let users = enforcing.len();
        let mut chain = enforcing;
        chain.extend(self.chain().into_iter().skip(self.user_modules.len()));
        let compiled = trace_fresh(self.generation, &chain, &record)?;
        if let Some(i) = compiled.module_index
            && i < users
        {
            // A user module decided: the rule model knows nothing of its rules.
            let name = compiled.module_name.clone().unwrap_or_default();
            return Ok(TraceAnswer {
                record,
                reference_action: compiled.action,
                reference_rule: compiled.rule_id,
                action: compiled.action,
                chain: None,
                origin: format!("policy module {name}, its rule {}", compiled.rule_id),
                by_user_module: true,
                compiled,
            });
        }
        // A rate-limited rule reached and matched decides (within its rate) before the
        // policy: the reference answer is then that rule's.
        if let Some(l) = self
            .limits
            .iter()
            .find(|l| reference::evaluate(&l.ruleset, &record).action == Action::Accept)
        {
            let v = l.limit.verdict;
            return Ok(TraceAnswer {
                record,
                compiled,
                reference_action: v.action,
                reference_rule: v.rule,
                action: v.action,
                chain: Some(Chain::User),
                origin: format!("{} (while within its -m limit rate)", l.origin),
                by_user_module: false,
            });
        }
        let reference = reference::evaluate(&self.ruleset, &record);
        let rule = reference.rule;
        let action = match reference.action {
            Action::Continue => self.ruleset.default,
            a => a,
        };
        Ok(TraceAnswer {
            record,
            compiled,
            reference_action: reference.action,
            reference_rule: rule,
            action,
            chain: self.ruleset.rule(rule).map(|r| r.chain),
            origin: self.origin(rule),
            by_user_module: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::trace::lab_state;
    use crate::lab::{LabSpec, WALKTHROUGH_TOML};
    use dataplane::wasm::WasmConfig;

    fn walkthrough() -> (HostState, UserRules) {
        let spec = LabSpec::from_toml(WALKTHROUGH_TOML, "walkthrough").unwrap();
        let rules = UserRules::from_lines(&spec.rules, "walkthrough");
        (lab_state(&spec), rules)
    }

    fn packet(state: &HostState, src: &str, dst: &str, port: u16) -> PacketSpec {
        let c = |n: &str| {
            state.networks[0]
                .network
                .containers
                .iter()
                .find(|c| c.name == n)
                .unwrap()
        };
        PacketSpec {
            src: c(src).ips[0],
            dst: c(dst).ips[0],
            protocol: proto::TCP,
            dst_port: port,
            in_port: c(src).port,
            out_port: c(dst).port,
        }
    }

    #[test]
    fn walkthrough_traces_name_the_deciding_rule_and_both_evaluators_agree() {
        let wasm = WasmRuntime::new(WasmConfig::default()).unwrap();
        let (state, rules) = walkthrough();
        let b = build(&wasm, &state, &HostView::default(), &rules, &[], 7).unwrap();
        assert_eq!(b.generation, 7);
        assert_eq!(b.instances(2).unwrap().len(), 2);

        let t = b
            .trace(&packet(&state, "nginx_server1", "nginx_server2", 80))
            .unwrap();
        assert!(t.agree(), "{t:?}");
        assert_eq!((t.action, t.chain), (Action::Drop, Some(Chain::Icc)));

        let t = b
            .trace(&packet(&state, "client3", "nginx_server2", 80))
            .unwrap();
        assert!(t.agree(), "{t:?}");
        assert_eq!((t.action, t.chain), (Action::Accept, Some(Chain::Docker)));
        assert!(t.origin.contains("link client3"), "{}", t.origin);

        let t = b
            .trace(&packet(&state, "client3", "nginx_server2", 7))
            .unwrap();
        assert!(t.agree(), "{t:?}");
        assert_eq!(t.action, Action::Drop);

        let s1 = packet(&state, "client3", "nginx_server1", 80);
        let from_outside1 = PacketSpec {
            src: "198.18.1.2".parse().unwrap(),
            in_port: GATEWAY,
            ..s1
        };
        let t = b.trace(&from_outside1).unwrap();
        assert!(t.agree(), "{t:?}");
        assert_eq!((t.action, t.chain), (Action::Drop, Some(Chain::User)));
        assert!(t.origin.starts_with("-I -s 198.18.1.2"), "{}", t.origin);
        let t = b
            .trace(&PacketSpec {
                src: "198.18.2.2".parse().unwrap(),
                ..from_outside1
            })
            .unwrap();
        assert_eq!((t.action, t.chain), (Action::Accept, Some(Chain::Docker)));
    }

    const GATEWAY: PortId = crate::state::GATEWAY_PORT;

    #[test]
    fn a_bad_user_rule_is_an_error_naming_line_and_token() {
        let wasm = WasmRuntime::new(WasmConfig::default()).unwrap();
        let (state, _) = walkthrough();
        let rules = UserRules {
            text: "# comment\n-I -s client3 -j DROP\n-A -d nosuch -j DROP\n".into(),
            origin: "rules.txt".into(),
            ipsets: None,
        };
        assert_eq!(rules.count(), 2);
        let e = build(&wasm, &state, &HostView::default(), &rules, &[], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rules.txt") && e.contains("line 3"), "{e}");
        assert!(e.contains("nosuch"), "{e}");
    }
}
