use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match fmn_sample::Args::parse_with_config() {
        Ok(a) => a,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    fmn_core::allocator::tune_for_tensors();
    fmn_core::logging::init(args.verbose, false);
    match fmn_sample::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
