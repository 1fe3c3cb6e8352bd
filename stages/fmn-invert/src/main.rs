#![allow(unused_crate_dependencies)]
fn main() -> std::process::ExitCode {
    fmn_core::cli::exit(fmn_invert::cli::run())
}
