//! The `bridgewall` binary: a thin wrapper over the controller's command line.
fn main() -> anyhow::Result<()> {
    controller::cli::main()
}
