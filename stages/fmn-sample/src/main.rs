use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = fmn_sample::Args::parse();
    fmn_core::allocator::tune_for_tensors();
    fmn_core::logging::init(args.verbose);
    match fmn_sample::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
