use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{AuditCmd, Global};
use crate::{output, session};

fn opt<'a>(q: &mut Vec<(&'a str, String)>, k: &'a str, v: Option<String>) {
    if let Some(v) = v {
        q.push((k, v));
    }
}

fn print_report(g: &Global, r: &serde_json::Value) -> anyhow::Result<ExitCode> {
    let ok = r["ok"].as_bool().unwrap_or(false);
    if g.json {
        output::json(r)?;
    } else if ok {
        println!(
            "OK: {} events, {} checkpoints verified (last entry {}).",
            r["events"], r["checkpoints"], r["last_seq"]
        );
    } else {
        let p = &r["first_problem"];
        println!(
            "TAMPERED: first problem at entry {}: {} ({})",
            p["seq"],
            p["message"].as_str().unwrap_or(""),
            p["kind"].as_str().unwrap_or("")
        );
    }
    if let Some(k) = r["public_key"].as_str()
        && !g.json
    {
        println!("Checkpoint public key: {k}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

pub async fn run(g: &Global, c: AuditCmd) -> anyhow::Result<ExitCode> {
    match c {
        AuditCmd::List {
            action,
            actor,
            outcome,
            target,
            from,
            to,
            limit,
            all,
        } => {
            let client = session::authed(g)?;
            let mut base = vec![("limit", limit.to_string())];
            opt(&mut base, "action", action);
            opt(&mut base, "actor", actor);
            opt(&mut base, "outcome", outcome);
            opt(&mut base, "target", target);
            opt(&mut base, "from", from);
            opt(&mut base, "to", to);
            let mut events = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = base.clone();
                opt(&mut q, "cursor", cursor.take());
                let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let page = client.audit_events(&pairs).await?;
                events.extend(page.events);
                match page.next_cursor {
                    Some(c) if all => cursor = Some(c),
                    _ => break,
                }
            }
            if g.json {
                output::json(&events)?;
            } else {
                output::table(
                    &[
                        "seq", "time", "actor", "action", "target", "outcome", "source",
                    ],
                    events
                        .iter()
                        .map(|e| {
                            let ev = &e["event"];
                            let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
                            vec![
                                e["seq"].to_string(),
                                s(&ev["time"]),
                                s(&ev["actor"]["name"]),
                                s(&ev["action"]),
                                [
                                    &ev["target"]["project"],
                                    &ev["target"]["env"],
                                    &ev["target"]["name"],
                                ]
                                .iter()
                                .filter_map(|v| v.as_str())
                                .collect::<Vec<_>>()
                                .join("/"),
                                format!(
                                    "{}{}",
                                    s(&ev["outcome"]),
                                    ev["error_code"]
                                        .as_str()
                                        .map(|c| format!(" ({c})"))
                                        .unwrap_or_default()
                                ),
                                s(&ev["source"]),
                            ]
                        })
                        .collect(),
                );
            }
        }
        AuditCmd::Export {
            format,
            from,
            to,
            output,
        } => {
            let client = session::authed(g)?;
            let mut q = vec![("format", format)];
            opt(&mut q, "from", from);
            opt(&mut q, "to", to);
            let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut res = client.audit_export(&pairs).await?;
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(
                    std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            // Copy chunk by chunk: the export is never held in memory whole.
            while let Some(chunk) = res.chunk().await.context("read the export stream")? {
                out.write_all(&chunk)?;
            }
            out.flush()?;
        }
        AuditCmd::Verify {
            file: Some(path),
            public_key,
        } => {
            let f =
                std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
            let report = coffer_core::audit::verify_export(
                std::io::BufReader::new(f),
                public_key.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            return print_report(g, &serde_json::to_value(report)?);
        }
        AuditCmd::Verify { file: None, .. } => {
            let r = session::authed(g)?.audit_verify().await?;
            return print_report(g, &r);
        }
        AuditCmd::Checkpoint => {
            let r = session::authed(g)?.audit_checkpoint().await?;
            if g.json {
                output::json(&r)?;
            } else {
                println!("Checkpoint at entry {}.", r["checkpoint"]["seq"]);
            }
        }
        AuditCmd::Log { action, detail } => {
            let detail = detail
                .map(|d| {
                    serde_json::from_str::<serde_json::Value>(&d).context("--detail must be JSON")
                })
                .transpose()?;
            let r = session::authed(g)?
                .audit_log(&action, detail.as_ref())
                .await?;
            if g.json {
                output::json(&r)?;
            } else {
                println!("Recorded {}.", r["action"].as_str().unwrap_or(&action));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
