use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = fmn_resteer::cli::Args::parse();
    fmn_core::allocator::tune_for_tensors();
    fmn_core::logging::init(args.verbose, false);
    match fmn_resteer::cli::run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
