use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use std::path::{Path, PathBuf};

use coffer_core::audit::ArchiveTarget;
use coffer_core::audit::Identities;
use coffer_core::audit::segment::SegmentsReport;

use crate::cli::{AuditCmd, Global, IdentityArg, OperatorDb};
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

/// Exports are never encrypted: an age file given to verify is a segment.
fn is_segment(path: &Path, ids: &Identities) -> bool {
    use coffer_core::audit::segment::{is_encrypted, segment_in};
    is_encrypted(path).unwrap_or(false) || segment_in(path, ids).is_ok_and(|s| s.is_some())
}

fn verify_segment_files(
    files: &[PathBuf],
    key: Option<&str>,
    ids: &Identities,
) -> anyhow::Result<SegmentsReport> {
    coffer_core::audit::segment::verify_segments(files, key, ids).map_err(|e| anyhow::anyhow!(e))
}

/// `--identity FILE`, read now; none when not given.
pub fn identities(a: &IdentityArg) -> anyhow::Result<Identities> {
    let Some(path) = &a.identity else {
        return Ok(Identities::none());
    };
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
    );
    Identities::parse(&text).map_err(|e| anyhow::anyhow!("--identity {}: {e}", path.display()))
}

fn print_segments_report(g: &Global, r: &SegmentsReport) -> anyhow::Result<ExitCode> {
    if g.json {
        output::json(r)?;
    } else if r.ok {
        let names: Vec<&str> = r.segments.iter().map(|s| s.name.as_str()).collect();
        println!(
            "OK: {} segments ({}) and {} exports, {} events verified.",
            r.segments.len(),
            if names.is_empty() {
                "-".to_owned()
            } else {
                names.join(", ")
            },
            r.exports,
            r.events
        );
    } else if let Some(p) = &r.first_problem {
        println!("TAMPERED: {} ({}): {}", p.file, p.kind, p.message);
    }
    Ok(if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `--before`: an RFC 3339 time, or a date meaning its midnight UTC.
fn parse_cut(s: &str) -> anyhow::Result<i64> {
    let text = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    let t = humantime::parse_rfc3339_weak(&text)
        .with_context(|| format!("--before {s:?}: use a date (2026-11-01) or an RFC 3339 time"))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .context("--before is before 1970")?
        .as_millis();
    Ok(i64::try_from(ms)?)
}

/// The service over the server's database, sealed (archiving and pruning need no key),
/// with the server's archive settings.
async fn operator_coffer(
    o: &OperatorDb,
) -> anyhow::Result<(coffer_core::Coffer, coffer_core::audit::ArchiveSettings)> {
    let args = crate::cli::ServerArgs {
        dev: o.dev,
        config: o.config.clone(),
        listen: None,
        data_dir: o.data_dir.clone(),
    };
    let (cfg, storage) = crate::server_config::load(&args)?;
    if storage.url.is_none() && !cfg.data_dir.join("coffer.db").exists() {
        anyhow::bail!(
            "no Coffer database in {}: give the server's --config, --data-dir or --dev",
            cfg.data_dir.display()
        );
    }
    let storage = crate::storage::open(&storage, &cfg.data_dir).await?;
    Ok((
        coffer_core::Coffer::new(storage, cfg.core)?,
        cfg.audit_archive,
    ))
}

/// Say what an operator can do about a refusal.
fn operator_error(e: coffer_core::CoreError) -> anyhow::Error {
    let text = format!("{e:?}");
    if text.contains("permission denied") {
        anyhow::anyhow!(
            "{e}: this database role may not record segments or prune; run it with the schema owner's URL (COFFER_DATABASE_URL)"
        )
    } else {
        anyhow::anyhow!("{e}")
    }
}

fn progress_bar(g: &Global) -> indicatif::ProgressBar {
    let bar = if g.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "archive [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
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
            cursor: start,
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
            let mut cursor: Option<String> = start;
            let more = loop {
                let mut q = base.clone();
                opt(&mut q, "cursor", cursor.take());
                let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let page = client.audit_events(&pairs).await?;
                events.extend(page.events);
                match page.next_cursor {
                    Some(c) if all => cursor = Some(c),
                    next => break next,
                }
            };
            if let Some(c) = &more {
                // On standard error, so that --json output stays one document.
                eprintln!("More events follow: add `--cursor {c}` for the next page, or `--all`.");
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
            segments,
            org,
            output,
            identity,
            ..
        } if !segments.is_empty() => {
            let org = org.context("--org: which organisation's chain to export (the system chain: 00000000-0000-0000-0000-000000000000)")?;
            let ids = identities(&identity)?;
            let report = verify_segment_files(&segments, None, &ids)?;
            if !report.ok {
                print_segments_report(g, &report)?;
                anyhow::bail!("the segments do not verify: nothing exported");
            }
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(
                    std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let n =
                coffer_core::audit::segment::export_from_segments(&segments, org, &ids, &mut out)
                    .map_err(|e| anyhow::anyhow!(e))?;
            if output.is_some() {
                eprintln!(
                    "Exported {n} events of {org} from {} segments.",
                    segments.len()
                );
            }
        }
        AuditCmd::Export {
            format,
            from,
            to,
            output,
            ..
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
            file,
            public_key,
            identity,
        } if !file.is_empty() => {
            let ids = identities(&identity)?;
            if file.len() > 1 || is_segment(&file[0], &ids) {
                let report = verify_segment_files(&file, public_key.as_deref(), &ids)?;
                return print_segments_report(g, &report);
            }
            let path = &file[0];
            let f =
                std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
            let report = coffer_core::audit::verify_export(
                std::io::BufReader::new(f),
                public_key.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            return print_report(g, &serde_json::to_value(report)?);
        }
        AuditCmd::Verify { .. } => {
            let r = session::authed(g)?.audit_verify().await?;
            return print_report(g, &r);
        }
        AuditCmd::Archive {
            before,
            out,
            prune,
            rate,
            recipients: keys,
            recipients_file,
            server,
        } => {
            let cut = parse_cut(&before)?;
            // None for a plaintext segment.
            let to = crate::archive_config::recipients(
                (!keys.is_empty()).then_some(keys.as_slice()),
                recipients_file.as_deref(),
                "--recipient",
            )?;
            let (coffer, _) = operator_coffer(&server).await?;
            coffer.audit().set_archive_rate(rate.filter(|r| *r > 0));
            let bar = progress_bar(g);
            let row = coffer
                .audit()
                .archive(
                    cut,
                    ArchiveTarget::File(out.clone()),
                    to.as_ref(),
                    &mut |n, total| {
                        bar.set_length(total);
                        bar.set_position(n);
                    },
                )
                .await;
            bar.finish_and_clear();
            let Some(row) = row.map_err(operator_error)? else {
                if g.json {
                    output::json(&serde_json::json!({ "archived": null }))?;
                } else {
                    println!(
                        "Nothing to archive: no chain has a signed checkpoint before {before} that is not archived yet."
                    );
                }
                return Ok(ExitCode::SUCCESS);
            };
            let pruned = if prune {
                Some(
                    coffer
                        .audit()
                        .prune(std::slice::from_ref(&out), &Identities::none())
                        .await
                        .map_err(operator_error)?,
                )
            } else {
                None
            };
            if g.json {
                output::json(&serde_json::json!({
                    "segment": row.number, "name": row.name, "file": out, "events": row.events,
                    "bytes": row.bytes, "sha256": hex::encode(row.sha256), "pruned": pruned,
                }))?;
            } else {
                println!(
                    "Archived {} events to {} (segment {:06}, {} bytes, sha256 {}).",
                    row.events,
                    out.display(),
                    row.number,
                    row.bytes,
                    hex::encode(row.sha256)
                );
                if let Some(p) = pruned {
                    println!(
                        "Pruned {} events from {} chains.",
                        p.deleted,
                        p.chains.len()
                    );
                }
                println!(
                    "Keep the file and the checkpoint public key: together they prove these events."
                );
            }
        }
        AuditCmd::Prune {
            file,
            identity,
            server,
        } => {
            let ids = identities(&identity)?;
            let (coffer, _) = operator_coffer(&server).await?;
            let p = coffer
                .audit()
                .prune(&file, &ids)
                .await
                .map_err(operator_error)?;
            if g.json {
                output::json(&p)?;
            } else {
                println!(
                    "Pruned {} events from {} chains.",
                    p.deleted,
                    p.chains.len()
                );
            }
        }
        AuditCmd::Status { server } => {
            let (coffer, settings) = operator_coffer(&server).await?;
            let s = coffer.audit().archive_status(true, &settings).await?;
            if g.json {
                output::json(&s)?;
            } else {
                let ts = |ms: Option<i64>| {
                    ms.map_or_else(
                        || "-".to_owned(),
                        |m| {
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH
                                    + std::time::Duration::from_millis(
                                        u64::try_from(m).unwrap_or(0),
                                    ),
                            )
                            .to_string()
                        },
                    )
                };
                println!("chains:              {}", s.chains);
                println!("live events:         {}", s.live_events);
                println!("database bytes:      {}", s.bytes);
                println!("oldest live event:   {}", ts(s.oldest_live_event_ms));
                println!(
                    "segments:            {} ({} events)",
                    s.segments, s.archived_events
                );
                println!("pruned events:       {}", s.pruned_events);
                println!(
                    "last segment:        {}",
                    s.last_segment.as_deref().unwrap_or("-")
                );
                println!("last archive:        {}", ts(s.last_archive_ms));
                println!("chains to prune:     {}", s.chains_pending_prune);
                match (s.every_secs, s.next_cut_ms) {
                    (Some(every), Some(cut)) => {
                        let every =
                            humantime::format_duration(std::time::Duration::from_secs(every));
                        println!(
                            "next run:            within {every} (the leader runs it every {every}; it archives events before {}{})",
                            ts(Some(cut)),
                            if s.encrypted {
                                ", encrypted with age"
                            } else {
                                ""
                            }
                        );
                    }
                    _ => println!(
                        "next run:            none (scheduled archiving is off: audit.archive.after)"
                    ),
                }
            }
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
