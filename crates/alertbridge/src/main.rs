//! The `alertbridge` binary: a thin edge over [`alertbridge::cli`].

fn main() -> std::process::ExitCode {
    alertbridge::cli::main()
}
