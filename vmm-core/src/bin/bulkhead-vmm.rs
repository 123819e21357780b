//! `bulkhead-vmm`: one partition per process. No GUI dependencies; builds static.

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = vmm_core::cli::VmmCli::parse();
    std::process::exit(vmm_core::cli::main_with(cli));
}
