//! Organisations, members, API keys, MFA, sessions and the account itself.

use anyhow::Context;
use serde_json::Value;

use crate::cli::{AccountCmd, ApikeyCmd, Global, MfaCmd, OrgCmd, SessionCmd};
use crate::cmd::auth::{prompt, read_password};
use crate::{output, session};

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        Value::Array(a) if a.is_empty() => "all".into(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn rows(list: &[Value], keys: &[&str]) -> Vec<Vec<String>> {
    list.iter()
        .map(|v| keys.iter().map(|k| s(v, k)).collect())
        .collect()
}

pub async fn org(g: &Global, c: OrgCmd) -> anyhow::Result<()> {
    if let OrgCmd::Accept {
        token,
        username,
        password_stdin,
    } = c
    {
        let saved = session::load()?;
        let (addr, ca) = session::endpoint(g, &saved);
        let client = session::client_for(&addr, ca.as_deref())?;
        let password = read_password(password_stdin, "Password (new or existing account): ")?;
        let v = client
            .accept_invitation(&token, username.as_deref(), &password)
            .await?;
        return output::done(
            g.json,
            v,
            "Invitation accepted. Log in with `coffer login` (your username, or your e-mail address).",
        );
    }
    let client = session::authed(g)?;
    match c {
        OrgCmd::List => {
            let v = client.orgs().await?;
            if g.json {
                return output::json(&v);
            }
            output::table(
                &["", "organisation", "role"],
                v.iter()
                    .map(|o| {
                        let mark = if o["active"] == Value::Bool(true) {
                            "*"
                        } else {
                            ""
                        };
                        vec![mark.into(), s(o, "name"), s(o, "role")]
                    })
                    .collect(),
            );
        }
        OrgCmd::Create { name } => {
            let v = client.create_org(&name).await?;
            output::done(
                g.json,
                v,
                format!(
                    "Created organisation {name}; you are its Owner. Switch with `coffer org switch {name}`."
                ),
            )?;
        }
        OrgCmd::Switch { name } => {
            let r = client.switch_org(&name).await?;
            let mut saved = session::load()?;
            saved.token = r.token;
            session::save(&saved)?;
            output::done(
                g.json,
                serde_json::json!({ "active": name }),
                format!("Active organisation: {name}."),
            )?;
        }
        OrgCmd::Members => {
            let v = client.members().await?;
            if g.json {
                return output::json(&v);
            }
            output::table(
                &["user", "email", "role", "mfa", "joined"],
                rows(
                    &v,
                    &["username", "email", "role", "mfa_enabled", "joined_at"],
                ),
            );
        }
        OrgCmd::Invite { email, role } => {
            let v = client.invite(&email, &role).await?;
            if g.json {
                return output::json(&v);
            }
            println!("Invited {email} as {role}.");
            match v["token"].as_str() {
                Some(t) => println!(
                    "No mail server is configured: pass this one-time token on securely:\n  coffer org accept {t}"
                ),
                None => println!("The invitation was sent by e-mail."),
            }
        }
        OrgCmd::Invitations => {
            let v = client.invitations().await?;
            if g.json {
                return output::json(&v);
            }
            output::table(
                &["email", "role", "expires", "accepted"],
                rows(&v, &["email", "role", "expires_at", "accepted_at"]),
            );
        }
        OrgCmd::SetRole { username, role } => {
            client.set_role(&username, &role).await?;
            output::done(
                g.json,
                serde_json::json!({ "member": username, "role": role }),
                format!("{username} is now {role}."),
            )?;
        }
        OrgCmd::Remove { username } => {
            client.remove_member(&username).await?;
            output::done(
                g.json,
                serde_json::json!({ "removed": username }),
                format!("Removed {username}."),
            )?;
        }
        OrgCmd::Delete { confirm } => {
            client.delete_org(&confirm).await?;
            // The session belonged to the deleted organisation and ended with it.
            let mut saved = session::load()?;
            saved.token = None;
            session::save(&saved)?;
            output::done(
                g.json,
                serde_json::json!({ "deleted": confirm, "logged_out": true }),
                format!(
                    "Organisation '{confirm}' deleted; its keys are destroyed.\n\
                     Copies of the database made before now become unreadable once an operator runs `coffer operator rekey`.\n\
                     Your session belonged to it and has ended: run `coffer login` to continue in another organisation (`coffer org list` shows them)."
                ),
            )?;
        }
        OrgCmd::RequireMfa { state } => {
            client.set_require_mfa(state == "on").await?;
            output::done(
                g.json,
                serde_json::json!({ "require_mfa": state == "on" }),
                format!("MFA requirement: {state}."),
            )?;
        }
        OrgCmd::Accept { .. } => anyhow::bail!("accepting an invitation needs no login"),
    }
    Ok(())
}

pub async fn apikey(g: &Global, c: ApikeyCmd) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    match c {
        ApikeyCmd::Create {
            name,
            role,
            read_only,
            projects,
            envs,
            expires_in,
        } => {
            let v = client
                .create_api_key(&serde_json::json!({
                    "name": name, "role": role, "read_only": read_only,
                    "projects": projects, "envs": envs, "expires_in": expires_in,
                }))
                .await?;
            if g.json {
                return output::json(&v);
            }
            let key = v["key"].as_str().context("no key in the answer")?;
            eprintln!("API key {name} created. It is shown once; store it now:");
            println!("{key}");
        }
        ApikeyCmd::List => {
            let v = client.api_keys().await?;
            if g.json {
                return output::json(&v);
            }
            output::table(
                &[
                    "id",
                    "name",
                    "prefix",
                    "role",
                    "projects",
                    "envs",
                    "expires",
                    "last used",
                    "revoked",
                ],
                rows(
                    &v,
                    &[
                        "id",
                        "name",
                        "prefix",
                        "role",
                        "projects",
                        "envs",
                        "expires_at",
                        "last_used_at",
                        "revoked_at",
                    ],
                ),
            );
        }
        ApikeyCmd::Revoke { id } => {
            client.revoke_api_key(&id).await?;
            output::done(
                g.json,
                serde_json::json!({ "revoked": id }),
                format!("Revoked API key {id}."),
            )?;
        }
    }
    Ok(())
}

pub async fn mfa(g: &Global, c: MfaCmd) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    match c {
        MfaCmd::Enroll { password_stdin } => {
            let password = read_password(password_stdin, "Password: ")?;
            let v = client.mfa_enroll(&password).await?;
            eprintln!("Add this to your authenticator app (or type the secret in):");
            eprintln!("{}", s(&v, "otpauth_uri"));
            eprintln!("secret: {}", s(&v, "secret"));
            // With --password-stdin the code is the next line of standard input.
            let code = prompt("Code from the app: ")?;
            let r = client.mfa_confirm(&code).await?;
            if g.json {
                return output::json(&serde_json::json!({
                    "mfa": true,
                    "otpauth_uri": v["otpauth_uri"],
                    "recovery_codes": r["recovery_codes"],
                }));
            }
            println!("{}", s(&v, "otpauth_uri"));
            eprintln!("MFA is on. One-time recovery codes (store them offline; shown once):");
            for c in r["recovery_codes"].as_array().into_iter().flatten() {
                println!("{}", c.as_str().unwrap_or_default());
            }
        }
        MfaCmd::Disable {
            code,
            password_stdin,
        } => {
            let password = read_password(password_stdin, "Password: ")?;
            let code = match code {
                Some(c) => c,
                None => prompt("Code from the app: ")?,
            };
            client.mfa_disable(&password, &code).await?;
            output::done(g.json, serde_json::json!({ "mfa": false }), "MFA is off.")?;
        }
    }
    Ok(())
}

pub async fn session(g: &Global, c: SessionCmd) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    match c {
        SessionCmd::List => {
            let v = client.sessions().await?;
            if g.json {
                return output::json(&v);
            }
            output::table(
                &["id", "current", "method", "address", "last seen", "expires"],
                rows(
                    &v,
                    &[
                        "id",
                        "current",
                        "method",
                        "address",
                        "last_seen_at",
                        "expires_at",
                    ],
                ),
            );
        }
        SessionCmd::Revoke { id } => {
            client.revoke_session(&id).await?;
            output::done(
                g.json,
                serde_json::json!({ "revoked": id }),
                format!("Session {id} ended."),
            )?;
        }
    }
    Ok(())
}

pub async fn account(g: &Global, c: AccountCmd) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    match c {
        AccountCmd::Password { password_stdin } => {
            // From standard input: the current password on the first line, the new one on
            // the second.
            let current = read_password(password_stdin, "Current password: ")?;
            let new = read_password(password_stdin, "New password: ")?;
            if !password_stdin {
                let again = read_password(false, "New password again: ")?;
                anyhow::ensure!(*new == *again, "the new passwords differ");
            }
            client.change_password(&current, &new).await?;
            output::done(
                g.json,
                serde_json::json!({ "password_changed": true }),
                "Password changed; your other sessions were ended.",
            )?;
        }
        AccountCmd::Email { email } => {
            client.set_email(email.as_deref()).await?;
            output::done(
                g.json,
                serde_json::json!({ "email": email }),
                "E-mail address updated.",
            )?;
        }
    }
    Ok(())
}
