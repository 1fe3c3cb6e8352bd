#![allow(unused_crate_dependencies)]
use std::process::ExitCode;

fn main() -> ExitCode {
    fmn_cli::exit(fmn_segment::cli::run())
}
