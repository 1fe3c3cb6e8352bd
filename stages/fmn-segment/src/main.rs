#![allow(unused_crate_dependencies)]
use std::process::ExitCode;

fn main() -> ExitCode {
    fmn_core::cli::exit(fmn_segment::cli::run())
}
