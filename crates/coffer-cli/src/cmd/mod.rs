mod account;
mod audit;
mod auth;
mod bench;
mod bench_load;
mod export;
mod key;
mod operator;
mod param;
mod project;
mod server;
mod shell;
mod soak;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Server(a) => server::run(a).await,
        Command::Operator(c) => operator::run(g, c).await,
        Command::Login(a) => auth::login(g, a).await,
        Command::Logout => auth::logout(g).await,
        Command::Whoami => auth::whoami(g).await,
        Command::Project(c) => project::project(g, c).await,
        Command::Env(c) => project::env(g, c).await,
        Command::Param(c) => param::run(g, c).await,
        Command::Run(a) => export::run(g, a).await,
        Command::Export(a) => export::export(g, a).await,
        Command::Audit(c) => return audit::run(g, c).await,
        Command::Migrate { database_url } => server::migrate(&database_url).await,
        Command::Bench(a) => bench::run(g, a).await,
        Command::BenchLoad(a) => bench_load::run(a).await,
        Command::Key(c) => key::run(g, c).await,
        Command::Org(c) => account::org(g, c).await,
        Command::Apikey(c) => account::apikey(g, c).await,
        Command::Mfa(c) => account::mfa(g, c).await,
        Command::Session(c) => account::session(g, c).await,
        Command::Account(c) => account::account(g, c).await,
        Command::Completion { shell } => shell::completion(shell),
        Command::Man { out } => shell::man(&out),
    }
    .map(|()| ExitCode::SUCCESS)
}
