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
        client
            .accept_invitation(&token, username.as_deref(), &password)
            .await?;
        println!("Invitation accepted. Log in with `coffer login`.");
        return Ok(());
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
            client.create_org(&name).await?;
            println!(
                "Created organisation {name}; you are its Owner. Switch with `coffer org switch {name}`."
            );
        }
        OrgCmd::Switch { name } => {
            let r = client.switch_org(&name).await?;
            let mut saved = session::load()?;
            saved.token = r.token;
            session::save(&saved)?;
            println!("Active organisation: {name}.");
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
            println!("{username} is now {role}.");
        }
        OrgCmd::Remove { username } => {
            client.remove_member(&username).await?;
            println!("Removed {username}.");
        }
        OrgCmd::Delete { confirm } => {
            client.delete_org(&confirm).await?;
            println!("Organisation '{confirm}' deleted; its keys are destroyed.");
            println!(
                "Copies of the database made before now become unreadable once an operator runs `coffer operator rekey`."
            );
            // The session belonged to the deleted organisation and ended with it.
            let mut saved = session::load()?;
            saved.token = None;
            session::save(&saved)?;
        }
        OrgCmd::RequireMfa { state } => {
            client.set_require_mfa(state == "on").await?;
            println!("MFA requirement: {state}.");
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
            println!("Revoked API key {id}.");
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
            println!("{}", s(&v, "otpauth_uri"));
            eprintln!("secret: {}", s(&v, "secret"));
            let code = prompt("Code from the app: ")?;
            let r = client.mfa_confirm(&code).await?;
            eprintln!("MFA is on. One-time recovery codes (store them offline; shown once):");
            for c in r["recovery_codes"].as_array().into_iter().flatten() {
                println!("{}", c.as_str().unwrap_or_default());
            }
        }
        MfaCmd::Disable { code } => {
            let password = read_password(false, "Password: ")?;
            let code = match code {
                Some(c) => c,
                None => prompt("Code from the app: ")?,
            };
            client.mfa_disable(&password, &code).await?;
            println!("MFA is off.");
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
            println!("Session {id} ended.");
        }
    }
    Ok(())
}

pub async fn account(g: &Global, c: AccountCmd) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    match c {
        AccountCmd::Password => {
            let current = read_password(false, "Current password: ")?;
            let new = read_password(false, "New password: ")?;
            let again = read_password(false, "New password again: ")?;
            anyhow::ensure!(*new == *again, "the new passwords differ");
            client.change_password(&current, &new).await?;
            println!("Password changed; your other sessions were ended.");
        }
        AccountCmd::Email { email } => {
            client.set_email(email.as_deref()).await?;
            println!("E-mail address updated.");
        }
    }
    Ok(())
}
