use clap::Parser;
use fmn_toy::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    fmn_core::allocator::tune_for_tensors();
    fmn_cli::logging::init(cli.verbose, false);
    fmn_toy::cli::run(&cli)
}
