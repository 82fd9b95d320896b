//! The `berth` command: everything happens in the library; this only maps the
//! outcome to a process exit code.
fn main() -> std::process::ExitCode {
    berth::cli::main()
}
