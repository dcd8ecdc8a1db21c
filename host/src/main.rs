fn main() -> std::process::ExitCode {
    rollway::cli::main()
}
