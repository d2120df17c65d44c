use anyhow::Context;

use crate::cli::{Global, OperatorCmd};
use crate::{output, session};

pub async fn run(g: &Global, c: OperatorCmd) -> anyhow::Result<()> {
    match c {
        OperatorCmd::Init { shares, threshold } => {
            let r = session::anonymous(g)?.init(shares, threshold).await?;
            if g.json {
                return output::json(&r);
            }
            println!("Coffer initialised. These are shown ONCE; Coffer keeps no copy of them.\n");
            let kind = if r.unsealed { "Recovery" } else { "Unseal" };
            for (i, s) in r.shares.iter().enumerate() {
                println!("{kind} share {}: {s}", i + 1);
            }
            if r.unsealed {
                println!(
                    "\nThe seal (KMS or HSM) unseals the server. Any {} of {} recovery shares \
                     authorise `coffer operator rekey` and `migrate-seal`, and rebuild the root \
                     key if the seal's key is lost. Give each to a different person.",
                    r.threshold,
                    r.shares.len()
                );
            } else {
                println!(
                    "\nAny {} of {} shares unseal the server. Give each to a different person.",
                    r.threshold,
                    r.shares.len()
                );
            }
            println!(
                "\nFirst owner account:\n  organisation: {}\n  username:     {}\n  password:     {}",
                r.bootstrap.org, r.bootstrap.username, r.bootstrap.password
            );
            if r.unsealed {
                println!("\nThe server is unsealed. Next: coffer login.");
            } else {
                println!(
                    "\nThe server is sealed. Next: coffer operator unseal (run it {} times).",
                    r.threshold
                );
            }
            Ok(())
        }
        OperatorCmd::Unseal { share, reset } => {
            let c = session::anonymous(g)?;
            let st = if reset {
                c.unseal_reset().await?
            } else {
                let share = match share {
                    Some(s) => s,
                    None => rpassword::prompt_password("Unseal share (input hidden): ")
                        .context("read the share")?,
                };
                c.unseal(&share).await?
            };
            print_status(g, &st)
        }
        OperatorCmd::Seal => {
            let st = session::authed(g)?.seal().await?;
            print_status(g, &st)
        }
        OperatorCmd::MigrateSeal {
            quorum,
            shares_stdin,
        } => {
            let current = read_shares(quorum, shares_stdin)?;
            let st = session::anonymous(g)?.migrate_seal(&current).await?;
            if g.json {
                return output::json(&st);
            }
            println!(
                "The server now uses the {} seal and is unsealed. The root key and the shares \
                 are unchanged. Restart other nodes with the same [seal] configuration.",
                st.seal_type.as_deref().unwrap_or("configured")
            );
            Ok(())
        }
        OperatorCmd::Rekey {
            shares,
            threshold,
            quorum,
            shares_stdin,
        } => {
            let current = read_shares(quorum, shares_stdin)?;
            let r = session::authed(g)?
                .rekey(&current, shares, threshold)
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!("Root key replaced. The old shares no longer unseal anything.");
            println!("These are shown ONCE; Coffer keeps no copy of them.\n");
            for (i, s) in r.shares.iter().enumerate() {
                println!("Unseal share {}: {s}", i + 1);
            }
            println!(
                "\nAny {} of {} shares unseal the server. If other nodes share its database (PostgreSQL), they have sealed themselves: unseal them with the new shares.",
                r.threshold,
                r.shares.len()
            );
            Ok(())
        }
        OperatorCmd::Status => {
            let st = session::anonymous(g)?.seal_status().await?;
            print_status(g, &st)
        }
    }
}

fn print_status(g: &Global, st: &coffer_client::SealStatus) -> anyhow::Result<()> {
    if g.json {
        return output::json(st);
    }
    let state = if !st.initialized {
        "not initialised"
    } else if st.sealed {
        "sealed"
    } else {
        "unsealed"
    };
    let progress = if st.sealed && st.threshold > 0 {
        format!("{}/{}", st.progress, st.threshold)
    } else {
        "-".into()
    };
    output::table(
        &["state", "seal", "threshold", "unseal progress", "version"],
        vec![vec![
            state.into(),
            st.seal_type.clone().unwrap_or_else(|| "-".into()),
            if st.shares > 0 {
                format!("{} of {}", st.threshold, st.shares)
            } else {
                "-".into()
            },
            progress,
            st.version.clone(),
        ]],
    );
    Ok(())
}

/// A quorum of shares: from standard input (one per line) or prompted without echo.
fn read_shares(quorum: u8, from_stdin: bool) -> anyhow::Result<Vec<String>> {
    if from_stdin {
        return Ok(std::io::stdin()
            .lines()
            .map_while(Result::ok)
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect());
    }
    (1..=quorum)
        .map(|i| {
            rpassword::prompt_password(format!("Current share {i} of {quorum} (input hidden): "))
                .context("read a share")
        })
        .collect()
}
