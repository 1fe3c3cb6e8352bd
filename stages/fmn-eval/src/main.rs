use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = fmn_eval::Cli::parse();
    fmn_core::logging::init(cli.verbose, false);
    match fmn_eval::run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
