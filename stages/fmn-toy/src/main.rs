fn main() -> std::process::ExitCode {
    fmn_core::cli::exit(fmn_toy::cli::run())
}
