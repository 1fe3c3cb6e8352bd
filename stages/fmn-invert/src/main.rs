use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = fmn_invert::cli::Args::parse();
    fmn_core::logging::init(args.verbose, false);
    fmn_core::allocator::tune_for_tensors();
    match fmn_invert::cli::run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
