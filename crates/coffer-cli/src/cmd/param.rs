use std::io::{IsTerminal, Read, Write};

use anyhow::Context;
use zeroize::Zeroizing;

use crate::cli::{Global, ParamCmd};
use crate::output::{self, MASK};
use crate::session;

/// VALUE as given; `@path`: the file's bytes as they are; `-` or absent: standard input
/// less exactly one trailing newline (`\n` or `\r\n`, what `echo` and editors add) unless
/// `raw`, or, when standard input is a terminal, a prompt (without echo when `hidden`).
fn read_value(
    value: Option<String>,
    name: &str,
    raw: bool,
    hidden: bool,
) -> anyhow::Result<Zeroizing<String>> {
    match value.as_deref() {
        None | Some("-") if std::io::stdin().is_terminal() => {
            let label = format!(
                "Value of {name}{}: ",
                if hidden { " (input hidden)" } else { "" }
            );
            if hidden {
                return Ok(Zeroizing::new(
                    rpassword::prompt_password(label).context("read the value")?,
                ));
            }
            eprint!("{label}");
            let mut s = Zeroizing::new(String::new());
            std::io::stdin()
                .read_line(&mut s)
                .context("read the value")?;
            Ok(Zeroizing::new(strip_newline(&s).to_owned()))
        }
        None | Some("-") => {
            let mut s = Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut s)
                .context("read the value from standard input")?;
            if raw {
                return Ok(s);
            }
            Ok(Zeroizing::new(strip_newline(&s).to_owned()))
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

/// A value as a table cell: its first line, and how many more there are (a certificate
/// or key would otherwise fill the screen); `param get` prints it whole.
fn shorten(v: &str) -> String {
    let mut lines = v.lines();
    let first = lines.next().unwrap_or_default();
    match lines.count() {
        0 => first.to_owned(),
        n => format!("{first} … (+{n} lines)"),
    }
}

/// Without its one trailing newline (`\n` or `\r\n`), if it has one.
fn strip_newline(s: &str) -> &str {
    s.strip_suffix("\r\n")
        .or_else(|| s.strip_suffix('\n'))
        .unwrap_or(s)
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
            raw,
        } => {
            let value = read_value(value, &name, raw, !no_secret)?;
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
            // Byte for byte into pipes and files (`$(coffer param get …)`, `> file`); a
            // newline only for a person at a terminal.
            let mut out = std::io::stdout().lock();
            out.write_all(p.value.as_deref().unwrap_or_default().as_bytes())?;
            if out.is_terminal() {
                out.write_all(b"\n")?;
            }
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
                            shorten(p.value.as_deref().unwrap_or_default())
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
                            h.actor.clone().unwrap_or_else(|| h.actor_id.to_string()),
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
            if d.entries.is_empty() {
                println!("No differences between {} and {}.", d.a, d.b);
                return Ok(());
            }
            let show = |p: &Option<coffer_client::Param>| match p {
                None => "(absent)".to_owned(),
                Some(p) if p.masked => MASK.to_owned(),
                Some(p) => shorten(p.value.as_deref().unwrap_or_default()),
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

#[cfg(test)]
mod tests {
    use super::{shorten, strip_newline};

    #[test]
    fn multi_line_values_are_shortened_in_tables() {
        assert_eq!(shorten("one line"), "one line");
        assert_eq!(
            shorten("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
            "-----BEGIN CERTIFICATE----- … (+2 lines)"
        );
        assert_eq!(shorten(""), "");
    }

    #[test]
    fn exactly_one_trailing_newline_goes() {
        for (input, kept) in [
            ("sk_live_123\n", "sk_live_123"),
            ("sk_live_123\r\n", "sk_live_123"),
            ("sk_live_123", "sk_live_123"),
            ("two\n\n", "two\n"),
            ("line one\nline two\n", "line one\nline two"),
            ("\n", ""),
            ("cr only\r", "cr only\r"),
        ] {
            assert_eq!(strip_newline(input), kept, "{input:?}");
        }
    }
}
