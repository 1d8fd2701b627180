//! Errors of the Wasm host. Every [`LoadError`] names the module and what is wrong with it,
//! because the person reading it is deciding whether to fix a policy they wrote.

/// Why a policy module was not accepted. A module that fails here never reaches a worker,
/// so the policy in force stays in force.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The byte size is over the configured cap; checked before compiling so a huge module
    /// costs no compile time or memory.
    #[error("policy module {module:?}: {size} bytes is over the {cap}-byte module size cap")]
    TooLarge {
        /// Module name given to `load`.
        module: String,
        /// Size of the bytes offered.
        size: usize,
        /// The configured cap ([`crate::wasm::WasmConfig::max_module_bytes`]).
        cap: usize,
    },
    /// wasmtime could not validate or compile the bytes (not Wasm, malformed, unsupported).
    #[error("policy module {module:?}: not a valid WebAssembly module: {reason}")]
    Invalid {
        /// Module name given to `load`.
        module: String,
        /// wasmtime's explanation.
        reason: String,
    },
    /// An import other than `bw.log`; modules get no other capability (WASI included).
    #[error(
        "policy module {module:?}: {import_module}.{field}: imports other than bw.log are not allowed"
    )]
    ForbiddenImport {
        /// Module name given to `load`.
        module: String,
        /// The import's module string, e.g. `wasi_snapshot_preview1`.
        import_module: String,
        /// The import's field name, e.g. `fd_write`.
        field: String,
    },
    /// `bw.log` imported with a type other than `(func (param i32 i32))`.
    #[error(
        "policy module {module:?}: import bw.log must be (func (param i32 i32)), found {found}"
    )]
    WrongImportType {
        /// Module name given to `load`.
        module: String,
        /// The type the module declared, as text.
        found: String,
    },
    /// A required ABI export is absent.
    #[error("policy module {module:?}: missing export {export:?} required by policy ABI v{abi}", abi = rules_wasm::abi::ABI_VERSION)]
    MissingExport {
        /// Module name given to `load`.
        module: String,
        /// The export's name.
        export: &'static str,
    },
    /// A required ABI export exists with the wrong kind or signature.
    #[error("policy module {module:?}: export {export:?} must be {expected}, found {found}")]
    WrongExportType {
        /// Module name given to `load`.
        module: String,
        /// The export's name.
        export: &'static str,
        /// What the ABI requires, as text.
        expected: &'static str,
        /// What the module has, as text.
        found: String,
    },
    /// `bw_abi_version` returned something other than the host's ABI version.
    #[error("policy module {module:?}: ABI version {found}, this host speaks version {expected}")]
    AbiVersion {
        /// Module name given to `load`.
        module: String,
        /// What the module reported.
        found: i32,
        /// [`rules_wasm::abi::ABI_VERSION`].
        expected: i32,
    },
    /// `bw_init` returned an I/O area that is misaligned or does not fit in memory.
    #[error(
        "policy module {module:?}: bw_init returned I/O area at {addr:#x}, which must be 8-byte aligned and have {need} bytes inside the {memory_size}-byte memory"
    )]
    BadIoArea {
        /// Module name given to `load`.
        module: String,
        /// The address returned (as unsigned).
        addr: u32,
        /// Bytes the I/O area must span ([`rules_wasm::abi::IO_AREA_SIZE`]).
        need: usize,
        /// The memory's size when `bw_init` returned.
        memory_size: usize,
    },
    /// Instantiation or a setup call (`bw_abi_version`, `bw_init`, a start function) failed:
    /// a trap, the epoch deadline, or an initial memory over the cap.
    #[error("policy module {module:?}: {stage} failed: {reason}")]
    Instantiate {
        /// Module name given to `load`.
        module: String,
        /// Which step: "instantiation", "bw_abi_version", "bw_init".
        stage: &'static str,
        /// wasmtime's explanation.
        reason: String,
    },
    /// The module loaded but failed the probe batch every module is given at load: it
    /// trapped, ran past the deadline or wrote an invalid verdict on ordinary packets, so it
    /// would only ever give fail-closed verdicts.
    #[error("policy module {module:?}: failed the load-time probe batch: {reason}")]
    ProbeFailed {
        /// Module name given to `load`.
        module: String,
        /// What went wrong.
        reason: String,
    },
}

/// Why the Wasm runtime itself could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A configuration value is out of range.
    #[error("wasm runtime configuration: {0}")]
    Config(String),
    /// wasmtime refused the engine configuration.
    #[error("wasm runtime: creating the wasmtime engine failed: {0}")]
    Engine(String),
    /// The OS would not start a helper thread (epoch ticker or reaper).
    #[error("wasm runtime: starting the {thread} thread failed: {source}")]
    Thread {
        /// Which thread.
        thread: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}
