//! `coffer run` and `coffer export`.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use base64::Engine;
use zeroize::Zeroizing;

use crate::cli::{ExportArgs, ExportFormat, Global, RunArgs, Target};
use crate::session;

/// The resolved values of an environment, secrets included. Refuses (naming every secret
/// concerned) when the caller's role or key cannot read secrets: a program run with some of
/// its values missing fails later and less clearly.
async fn resolve(g: &Global, t: &Target) -> anyhow::Result<BTreeMap<String, Zeroizing<String>>> {
    let params = session::authed(g)?
        .list_params(&t.project, &t.env, true)
        .await?;
    let mut out = BTreeMap::new();
    let mut refused = Vec::new();
    for p in params {
        match p.value {
            Some(v) => {
                out.insert(p.name, Zeroizing::new(v));
            }
            None => refused.push(p.name),
        }
    }
    if !refused.is_empty() {
        anyhow::bail!(
            "{} in {}/{} cannot be read with this login or API key: {} (the Viewer role does not read secret values; use a Contributor, e.g. an API key made with `coffer apikey create NAME --role contributor --read-only`)",
            if refused.len() == 1 {
                "1 secret".to_owned()
            } else {
                format!("{} secrets", refused.len())
            },
            t.project,
            t.env,
            refused.join(", ")
        );
    }
    Ok(out)
}

/// Replace this process with the command, its environment extended by the values.
pub async fn run(g: &Global, a: RunArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let values = resolve(g, &a.target).await?;
    let (program, args) = a.command.split_first().context("no command given")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    for (k, v) in &values {
        cmd.env(k, v.as_str());
    }
    drop(values);
    let err = cmd.exec();
    Err(err).with_context(|| format!("run {program}"))
}

/// POSIX-shell double quoting, so `set -a; . ./file` yields the exact values: only `\\`,
/// `"`, `$` and `` ` `` are special inside double quotes; newlines stay literal (multi-line
/// double-quoted values are also what dotenv libraries accept).
fn dotenv_quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '$' => s.push_str("\\$"),
            '`' => s.push_str("\\`"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// A JSON string is a valid YAML double-quoted scalar.
fn yaml_quote(v: &str) -> anyhow::Result<String> {
    Ok(serde_json::to_string(v)?)
}

fn k8s_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn k8s_name(project: &str, env: &str) -> String {
    let raw = format!("{project}-{env}").to_ascii_lowercase();
    let s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(253)
        .collect()
}

pub fn render(
    format: ExportFormat,
    values: &BTreeMap<String, Zeroizing<String>>,
    name: &str,
) -> anyhow::Result<Zeroizing<String>> {
    let mut out = Zeroizing::new(String::new());
    match format {
        ExportFormat::Dotenv => {
            for (k, v) in values {
                out.push_str(&format!("{k}={}\n", dotenv_quote(v)));
            }
        }
        ExportFormat::Json => {
            let m: BTreeMap<&str, &str> = values
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            out.push_str(&serde_json::to_string_pretty(&m)?);
            out.push('\n');
        }
        ExportFormat::Yaml => {
            for (k, v) in values {
                out.push_str(&format!("{}: {}\n", yaml_quote(k)?, yaml_quote(v)?));
            }
        }
        ExportFormat::K8sSecret => {
            let bad: Vec<&str> = values
                .keys()
                .filter(|k| !k8s_key_ok(k))
                .map(String::as_str)
                .collect();
            anyhow::ensure!(
                bad.is_empty(),
                "not valid Kubernetes Secret keys (allowed: letters, digits, '-', '_', '.'): {}",
                bad.join(", ")
            );
            out.push_str(&format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}\ntype: Opaque\ndata:\n",
                yaml_quote(name)?
            ));
            for (k, v) in values {
                out.push_str(&format!(
                    "  {k}: {}\n",
                    base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
                ));
            }
        }
    }
    Ok(out)
}

pub async fn export(g: &Global, a: ExportArgs) -> anyhow::Result<()> {
    let values = resolve(g, &a.target).await?;
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| k8s_name(&a.target.project, &a.target.env));
    // --json asks for JSON, whatever --format says.
    let format = if g.json { ExportFormat::Json } else { a.format };
    let text = render(format, &values, &name)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals() -> BTreeMap<String, Zeroizing<String>> {
        let mut m = BTreeMap::new();
        m.insert("A".to_owned(), Zeroizing::new("plain".to_owned()));
        m.insert(
            "B".to_owned(),
            Zeroizing::new("q\"u$o`te\\\nline".to_owned()),
        );
        m
    }

    #[test]
    fn dotenv_escapes_shell_and_quote_characters() {
        let t = render(ExportFormat::Dotenv, &vals(), "x").unwrap();
        assert_eq!(t.as_str(), "A=\"plain\"\nB=\"q\\\"u\\$o\\`te\\\\\nline\"\n");
    }

    #[test]
    fn json_and_yaml_roundtrip_values() {
        let j = render(ExportFormat::Json, &vals(), "x").unwrap();
        let parsed: BTreeMap<String, String> = serde_json::from_str(&j).unwrap();
        assert_eq!(parsed["B"], "q\"u$o`te\\\nline");
        let y = render(ExportFormat::Yaml, &vals(), "x").unwrap();
        assert!(
            y.contains("\"B\": \"q\\\"u$o`te\\\\\\nline\""),
            "{}",
            y.as_str()
        );
    }

    #[test]
    fn k8s_secret_base64_and_key_check() {
        let t = render(ExportFormat::K8sSecret, &vals(), "app-prod").unwrap();
        assert!(t.contains("kind: Secret"));
        assert!(t.contains("  A: cGxhaW4=\n"));
        let mut bad = vals();
        bad.insert("has space".into(), Zeroizing::new("v".into()));
        assert!(render(ExportFormat::K8sSecret, &bad, "x").is_err());
        assert_eq!(k8s_name("My App", "prod_eu"), "my-app-prod-eu");
    }
}
