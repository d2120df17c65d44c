//! `coffer key status|rotate|attach-external|detach-external`.

use std::time::{Duration, UNIX_EPOCH};

use coffer_client::KeyStatus;

use crate::cli::{Global, KeyCmd};
use crate::{output, session};

fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn print(s: &KeyStatus) {
    if let Some(k) = &s.external_key {
        println!("New terms are wrapped by the organisation's own key {k}.");
    }
    output::table(
        &["term", "created", "values", "state", "wrapped by"],
        s.terms
            .iter()
            .map(|t| {
                vec![
                    t.term.to_string(),
                    when(t.created_at),
                    t.values.to_string(),
                    if t.active { "active" } else { "retired" }.to_owned(),
                    t.wrapped_by.clone(),
                ]
            })
            .collect(),
    );
    match &s.rotation {
        Some(r) => {
            let state = match r.finished_at {
                Some(f) => format!("finished {}", when(f)),
                None => format!("rewrapping: {}/{} values", r.done, r.total),
            };
            println!(
                "Latest rotation: to term {} ({}), started {}, {state}.",
                r.target_term,
                r.reason,
                when(r.started_at)
            );
        }
        None => println!("Never rotated."),
    }
    println!(
        "Automatic rotation: after {} days or {} new values per term.",
        s.rotate_after_days, s.rotate_after_encryptions
    );
}

pub async fn run(g: &Global, c: KeyCmd) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    match c {
        KeyCmd::Status => {
            let s = client.key_status().await?;
            if g.json {
                return output::json(&s);
            }
            print(&s);
        }
        KeyCmd::AttachExternal { key, wait } => {
            let s = client.attach_external_key(&key).await?;
            finish(&client, s, wait, g.json).await?;
        }
        KeyCmd::DetachExternal { wait } => {
            let s = client.detach_external_key().await?;
            finish(&client, s, wait, g.json).await?;
        }
        KeyCmd::Rotate { wait } => {
            let s = client.rotate_key().await?;
            finish(&client, s, wait, g.json).await?;
        }
    }
    Ok(())
}

/// After a rotation (plain, attach or detach): report, and optionally wait for the rewrap.
async fn finish(
    client: &coffer_client::Client,
    mut s: KeyStatus,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let target = s.active_term;
    if !json {
        let by = s
            .terms
            .iter()
            .find(|t| t.term == target)
            .map_or("root", |t| t.wrapped_by.as_str());
        println!("New values now use term {target} (wrapped by {by}).");
    }
    if wait {
        s = wait_for_rewrap(client, target, json).await?;
    }
    if json {
        return output::json(&s);
    }
    if !wait {
        println!("Stored values are rewrapped in the background: `coffer key status`.");
    } else {
        println!("Every stored value is under term {target}.");
    }
    Ok(())
}

/// Poll until the rotation to `target` has finished, drawing its progress.
async fn wait_for_rewrap(
    client: &coffer_client::Client,
    target: u32,
    quiet: bool,
) -> anyhow::Result<KeyStatus> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "rewrap [{bar:40}] {pos}/{len} values ({per_sec}, {eta} left)",
        )?
        .progress_chars("=> "),
    );
    loop {
        let s = client.key_status().await?;
        let Some(r) = s.rotation.as_ref().filter(|r| r.target_term >= target) else {
            anyhow::bail!("the rotation to term {target} is no longer recorded");
        };
        bar.set_length(r.total);
        bar.set_position(r.done.min(r.total));
        if r.finished_at.is_some() {
            bar.finish();
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
