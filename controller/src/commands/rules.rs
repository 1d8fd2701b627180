//! `bridgewall rules import`: `iptables-save` output in, a checked rules file out, and a
//! report a person can read (what was taken, what was skipped and why).
use std::path::Path;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use rules_wasm::docker::{BridgeNetwork, HostNetworks};
use rules_wasm::iptables::parse_full;

use crate::runtime::host::HostView;
use crate::state::GATEWAY_PORT;

/// What `rules import` works on.
pub struct ImportInput<'a> {
    /// The rules (`iptables-save` output or rule lines).
    pub text: &'a str,
    /// `ipset save` output, if the rules name sets.
    pub ipsets: Option<&'a str>,
    /// The host's routes and addresses (`-i eth0`).
    pub host: &'a HostView,
    /// Where to write the rules file; `None` only checks.
    pub output: Option<&'a Path>,
    /// Report as JSON instead of a table.
    pub json: bool,
}

/// Checks `input.text` the way `run` will read it (container names cannot be checked
/// without the engine: iptables-save holds addresses only), writes it with its sets to
/// `input.output`, and reports.
pub fn import(input: &ImportInput<'_>) -> anyhow::Result<()> {
    let net = HostNetworks::from(BridgeNetwork {
        gateway_port: GATEWAY_PORT,
        ..BridgeNetwork::default()
    });
    let parsed = parse_full(input.text, input.ipsets, &input.host.names(&net))
        .context("standard input: the rules were not imported")?;
    let origins: std::collections::BTreeSet<&str> =
        parsed.rules.iter().map(|r| r.origin.as_str()).collect();
    if let Some(path) = input.output {
        write_private(path, input.text, input.ipsets)?;
    }
    if input.json {
        let warnings: Vec<serde_json::Value> = parsed
            .warnings
            .iter()
            .map(|w| serde_json::json!({ "line": w.line, "message": w.message }))
            .collect();
        let report = serde_json::json!({
            "rules": origins.len(),
            "flat_rules": parsed.rules.len(),
            "log_rules": parsed.logs.len(),
            "warnings": warnings,
            "written": input.output.map(|p| p.display().to_string()),
        });
        println!("{report}");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["imported", ""]);
    t.add_row(["rules that decide", &origins.len().to_string()]);
    t.add_row([
        "flat rules after chains and lists",
        &parsed.rules.len().to_string(),
    ]);
    t.add_row(["warnings", &parsed.warnings.len().to_string()]);
    t.add_row([
        "written to",
        &input
            .output
            .map_or("(nothing: checked only)".to_string(), |p| {
                p.display().to_string()
            }),
    ]);
    println!("{t}");
    for w in &parsed.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// Writes the rules (and the sets after them) to `path` with mode 0600, through a temporary
/// file renamed into place, so a reader never sees half a file.
fn write_private(path: &Path, text: &str, ipsets: Option<&str>) -> anyhow::Result<()> {
    let mut body = String::new();
    if let Some(sets) = ipsets {
        body.push_str("# ipsets (ipset save)\n");
        body.push_str(sets);
        if !sets.ends_with('\n') {
            body.push('\n');
        }
    }
    body.push_str(text);
    crate::private_file::write(path, body.as_bytes())
        .with_context(|| format!("writing the rules file {}", path.display()))
}
