fn main() -> std::process::ExitCode {
    tapnet::cli::main()
}
