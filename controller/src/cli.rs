//! The `bridgewall` command line (to be written).

/// Runs the command line; the binary's `main` is a thin wrapper over this.
pub fn main() -> anyhow::Result<()> {
    Ok(())
}
