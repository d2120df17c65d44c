//! The `coffer` command.

mod archive_config;
mod cli;
mod cmd;
mod output;
mod seal_config;
mod server_config;
mod session;
mod storage;

use clap::Parser;

// Measured with `coffer bench` against PostgreSQL: ~15% less server CPU per request than
// glibc's allocator (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cmd::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// What to do about an error whose cause is not obvious from its message.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let chain = format!("{e:?}");
    if chain.contains("UnknownIssuer") || chain.contains("invalid peer certificate") {
        return Some(
            "the server's certificate is not signed by a CA this command trusts: give the server's CA with --ca-cert FILE or COFFER_CACERT (a server with its internal CA writes it to tls/ca.pem in its data directory and prints its SHA-256 fingerprint at start: compare them)",
        );
    }
    if chain.contains("not_initialized") {
        return Some(
            "this server holds no root key yet: run `coffer operator init` against it once (or start it with `coffer server --dev` to try Coffer)",
        );
    }
    if chain.contains("Connection refused") {
        return Some(
            "nothing answers at that address: is the server running, and is --addr / COFFER_ADDR right (default https://127.0.0.1:8200)?",
        );
    }
    None
}
