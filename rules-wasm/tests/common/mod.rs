//! A minimal test-only host for policy modules: loads a module the way the dataplane must
//! (ABI version, exports, allowed imports), runs batches, and decodes verdicts. The real host
//! lives in `dataplane`; this one exists so rules-wasm can test its own modules.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use rules_wasm::abi::{
    ABI_VERSION, EXPORT_ABI_VERSION, EXPORT_EVALUATE, EXPORT_INIT, EXPORT_MEMORY, LOG_IMPORT,
    MAX_BATCH, PacketRecord, RECORD_SIZE, VERDICT_SIZE, VERDICTS_OFFSET, VerdictRecord,
};
use wasmtime::{Caller, Engine, Extern, Linker, Memory, Module, Store, TypedFunc};

/// A loaded, initialised policy module.
pub(crate) struct Host {
    store: Store<()>,
    memory: Memory,
    evaluate: TypedFunc<i32, ()>,
    io: usize,
    /// Messages the module logged through `bw.log`.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// The module's imports, as (module, name).
    pub imports: Vec<(String, String)>,
}

impl Host {
    /// Compiles, validates and instantiates `wasm`; an error names what is wrong.
    pub(crate) fn load(engine: &Engine, wasm: &[u8]) -> Result<Self, String> {
        let module = Module::new(engine, wasm).map_err(|e| format!("compile: {e:#}"))?;
        let imports: Vec<(String, String)> = module
            .imports()
            .map(|i| (i.module().to_string(), i.name().to_string()))
            .collect();
        for (m, n) in &imports {
            if (m.as_str(), n.as_str()) != LOG_IMPORT {
                return Err(format!("forbidden import {m}.{n}"));
            }
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut linker: Linker<()> = Linker::new(engine);
        let sink = logs.clone();
        linker
            .func_wrap(
                LOG_IMPORT.0,
                LOG_IMPORT.1,
                move |mut c: Caller<'_, ()>, ptr: i32, len: i32| {
                    if let Some(Extern::Memory(m)) = c.get_export(EXPORT_MEMORY) {
                        let data = m.data(&c);
                        let (p, l) = (ptr as u32 as usize, len as u32 as usize);
                        if let Some(b) = data.get(p..p.saturating_add(l)) {
                            sink.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(b).into_owned());
                        }
                    }
                },
            )
            .map_err(|e| e.to_string())?;
        let mut store = Store::new(engine, ());
        let inst = linker
            .instantiate(&mut store, &module)
            .map_err(|e| format!("instantiate: {e:#}"))?;
        let memory = inst
            .get_memory(&mut store, EXPORT_MEMORY)
            .ok_or("missing export memory")?;
        let version = inst
            .get_typed_func::<(), i32>(&mut store, EXPORT_ABI_VERSION)
            .map_err(|e| format!("export {EXPORT_ABI_VERSION}: {e}"))?;
        let init = inst
            .get_typed_func::<(), i32>(&mut store, EXPORT_INIT)
            .map_err(|e| format!("export {EXPORT_INIT}: {e}"))?;
        let evaluate = inst
            .get_typed_func::<i32, ()>(&mut store, EXPORT_EVALUATE)
            .map_err(|e| format!("export {EXPORT_EVALUATE}: {e}"))?;
        let v = version.call(&mut store, ()).map_err(|e| e.to_string())?;
        if v != ABI_VERSION {
            return Err(format!("ABI version {v}, expected {ABI_VERSION}"));
        }
        let io = init.call(&mut store, ()).map_err(|e| e.to_string())? as u32 as usize;
        if !io.is_multiple_of(8) || io + rules_wasm::abi::IO_AREA_SIZE > memory.data_size(&store) {
            return Err(format!("bad I/O area at {io}"));
        }
        Ok(Self {
            store,
            memory,
            evaluate,
            io,
            logs,
            imports,
        })
    }

    /// Calls `bw_evaluate(n)` on whatever records are in the I/O area (for timing the module
    /// alone, without the harness's encoding).
    pub(crate) fn evaluate_in_place(&mut self, n: i32) {
        self.evaluate.call(&mut self.store, n).unwrap();
    }

    /// Judges `recs` in batches of up to [`MAX_BATCH`].
    pub(crate) fn run(&mut self, recs: &[PacketRecord]) -> Vec<VerdictRecord> {
        let mut out = Vec::with_capacity(recs.len());
        for chunk in recs.chunks(MAX_BATCH) {
            {
                let mem = self.memory.data_mut(&mut self.store);
                for (i, r) in chunk.iter().enumerate() {
                    let at = self.io + i * RECORD_SIZE;
                    let b: &mut [u8; RECORD_SIZE] =
                        (&mut mem[at..at + RECORD_SIZE]).try_into().unwrap();
                    r.encode(b);
                }
                // Poison the verdicts so a module that writes nothing cannot pass by accident.
                for i in 0..chunk.len() {
                    let at = self.io + VERDICTS_OFFSET + i * VERDICT_SIZE;
                    mem[at..at + VERDICT_SIZE].copy_from_slice(&[0xee; VERDICT_SIZE]);
                }
            }
            self.evaluate
                .call(&mut self.store, chunk.len() as i32)
                .unwrap();
            let mem = self.memory.data(&self.store);
            for i in 0..chunk.len() {
                let at = self.io + VERDICTS_OFFSET + i * VERDICT_SIZE;
                let b: &[u8; VERDICT_SIZE] = mem[at..at + VERDICT_SIZE].try_into().unwrap();
                out.push(VerdictRecord::decode(b).expect("module wrote an invalid action code"));
            }
        }
        out
    }
}

/// A deterministic generator (SplitMix64) so failures reproduce from the printed seed.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}
