#![allow(unused_crate_dependencies)]
fn main() -> std::process::ExitCode {
    fmn_cli::exit(fmn_attack::cli::run())
}
