// jemalloc rather than glibc's malloc: measured in BENCHMARKS.md, it holds
// less memory per idle socket and costs less CPU per message.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    mixroom_realtime::cli::main()
}
