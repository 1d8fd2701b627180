//! The run's JSON: the whole [`Report`], pretty-printed, as `bench-<unix time>.json` and
//! `latest.json`.
use std::path::{Path, PathBuf};

use crate::bench::error::{BenchError, Result};
use crate::bench::report::Report;

/// Writes the report into `dir`; the path of the run's own file.
pub fn write(report: &Report, dir: &Path) -> Result<PathBuf> {
    let text = serde_json::to_string_pretty(report)?;
    let file = dir.join(format!("bench-{}.json", report.machine.started_unix));
    std::fs::write(&file, &text).map_err(|e| BenchError::io(&file, e))?;
    let latest = dir.join("latest.json");
    std::fs::write(&latest, &text).map_err(|e| BenchError::io(&latest, e))?;
    Ok(file)
}
