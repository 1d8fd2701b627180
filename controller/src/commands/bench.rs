//! `bridgewall bench`: the harness in [`crate::bench`] (its own namespaces, never the host's
//! Docker) run from the CLI; prints the summary tables and where the files went.
use anyhow::Context;

use crate::bench::Args;

/// Runs the benchmark `args` describe (or, with `--from`, redraws a run's plots and summary
/// from its JSON) and prints its Markdown summary.
pub fn bench(args: &Args) -> anyhow::Result<()> {
    let out = match &args.from {
        Some(json) => crate::bench::render_from(json, &args.out)
            .with_context(|| format!("bridgewall bench --from {}", json.display()))?,
        None => crate::bench::run(args).context("bridgewall bench")?,
    };
    println!("{}", out.markdown);
    println!("JSON:    {}", out.json.display());
    println!("summary: {}", out.summary.display());
    println!(
        "plots:   {} files in {}",
        out.plots.len(),
        args.out.display()
    );
    if !out.report.errors.is_empty() {
        anyhow::bail!(
            "{} measurement(s) failed (listed under \"Not measured\")",
            out.report.errors.len()
        );
    }
    Ok(())
}
