//! `coffer completion` and `coffer man`: generated from the same command definitions as
//! `--help`, so they never disagree with it.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

pub fn completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    clap_complete::generate(shell, &mut Cli::command(), "coffer", &mut std::io::stdout());
    Ok(())
}

pub fn man(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    clap_mangen::generate_to(Cli::command(), out)
        .with_context(|| format!("write the manual pages into {}", out.display()))?;
    println!(
        "Manual pages written to {} (read one with `man {}/coffer.1`, or add the directory to MANPATH).",
        out.display(),
        out.display()
    );
    Ok(())
}
