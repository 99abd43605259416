//! The `contextfs` command: thin glue over the library's `cli` module.

fn main() -> std::process::ExitCode {
    contextfs::cli::main()
}
