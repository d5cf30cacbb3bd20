//! `switchboard`: serve the engine, run migrations, check the configuration.

use clap::Parser;

/// The binary's allocator (the library leaves the choice to the program that
/// embeds it). Under load the server allocates a request's buffers on an
/// HTTP worker and frees them on the actors' thread; with glibc's malloc,
/// `malloc`/`free` and their consolidation were 15 % of the machine's CPU
/// at 8,000 req/s, and mimalloc applied about a quarter more messages per
/// second (BENCHMARKS.md, fifth session).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = switchboard::cli::Cli::parse();
    match switchboard::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
