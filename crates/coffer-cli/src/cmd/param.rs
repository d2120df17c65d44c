use std::io::{Read, Write};

use anyhow::Context;
use zeroize::Zeroizing;

use crate::cli::{Global, ParamCmd};
use crate::output::{self, MASK};
use crate::session;

/// VALUE as given; `-` or absent: standard input; `@path`: the file's contents.
fn read_value(value: Option<String>) -> anyhow::Result<Zeroizing<String>> {
    match value.as_deref() {
        None | Some("-") => {
            let mut s = Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut s)
                .context("read the value from standard input")?;
            Ok(s)
        }
        Some(v) if v.starts_with('@') => {
            let path = &v[1..];
            let bytes =
                Zeroizing::new(std::fs::read(path).with_context(|| format!("read {path}"))?);
            let s =
                std::str::from_utf8(&bytes).with_context(|| format!("{path} is not UTF-8 text"))?;
            Ok(Zeroizing::new(s.to_owned()))
        }
        Some(v) => Ok(Zeroizing::new(v.to_owned())),
    }
}

pub async fn run(g: &Global, c: ParamCmd) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    match c {
        ParamCmd::Set {
            name,
            value,
            target,
            secret,
            no_secret,
        } => {
            let value = read_value(value)?;
            let flag = if secret {
                Some(true)
            } else if no_secret {
                Some(false)
            } else {
                None
            };
            let r = client
                .set_param(&target.project, &target.env, &name, &value, flag)
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "Set {} in {}/{} (version {}{}).",
                r.name,
                target.project,
                target.env,
                r.version,
                if r.secret { ", secret" } else { "" }
            );
        }
        ParamCmd::Get { name, target } => {
            let p = client
                .get_param(&target.project, &target.env, &name)
                .await?;
            if g.json {
                return output::json(&p);
            }
            let mut out = std::io::stdout().lock();
            out.write_all(p.value.as_deref().unwrap_or_default().as_bytes())?;
            out.write_all(b"\n")?;
        }
        ParamCmd::List { target, reveal } => {
            let v = client
                .list_params(&target.project, &target.env, reveal)
                .await?;
            if g.json {
                return output::json(&v);
            }
            output::table(
                &["name", "value", "secret", "version", "defined in"],
                v.into_iter()
                    .map(|p| {
                        let value = if p.masked {
                            MASK.to_owned()
                        } else {
                            p.value.unwrap_or_default()
                        };
                        let from = if p.env == target.env {
                            p.env
                        } else {
                            format!("{} (inherited)", p.env)
                        };
                        vec![
                            p.name,
                            value,
                            if p.secret { "yes".into() } else { "no".into() },
                            p.version.to_string(),
                            from,
                        ]
                    })
                    .collect(),
            );
        }
        ParamCmd::History { name, target } => {
            let v = client.history(&target.project, &target.env, &name).await?;
            if g.json {
                return output::json(&v);
            }
            output::table(
                &["version", "action", "secret", "by", "at", ""],
                v.into_iter()
                    .map(|h| {
                        vec![
                            h.version.to_string(),
                            h.action,
                            if h.secret { "yes".into() } else { "no".into() },
                            h.actor_id.to_string(),
                            h.created_at,
                            if h.current {
                                "current".into()
                            } else {
                                String::new()
                            },
                        ]
                    })
                    .collect(),
            );
        }
        ParamCmd::Rollback { name, target, to } => {
            let r = client
                .rollback(&target.project, &target.env, &name, to)
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "Rolled {} back to the value of version {to} (now version {}).",
                r.name, r.version
            );
        }
        ParamCmd::Delete { name, target } => {
            let r = client
                .delete_param(&target.project, &target.env, &name)
                .await?;
            if g.json {
                return output::json(&r);
            }
            println!(
                "Deleted {} from {}/{} (history kept, version {}).",
                r.name, target.project, target.env, r.version
            );
        }
        ParamCmd::Diff {
            project,
            envs,
            reveal,
        } => {
            anyhow::ensure!(
                envs.len() == 2,
                "give exactly two environments: --env A --env B"
            );
            let d = client.diff(&project, &envs[0], &envs[1], reveal).await?;
            if g.json {
                return output::json(&d);
            }
            let show = |p: &Option<coffer_client::Param>| match p {
                None => "(absent)".to_owned(),
                Some(p) if p.masked => MASK.to_owned(),
                Some(p) => p.value.clone().unwrap_or_default(),
            };
            output::table(
                &["name", "change", &d.a, &d.b],
                d.entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.name.clone(),
                            e.kind.replace('_', " "),
                            show(&e.a),
                            show(&e.b),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}
