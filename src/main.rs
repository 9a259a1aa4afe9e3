fn main() -> std::process::ExitCode {
    mixroom_realtime::cli::main()
}
