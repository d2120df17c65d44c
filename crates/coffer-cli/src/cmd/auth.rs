use anyhow::Context;

use crate::cli::{Global, LoginArgs};
use crate::{output, session};

pub async fn login(g: &Global, a: LoginArgs) -> anyhow::Result<()> {
    let mut saved = session::load()?;
    let (addr, ca) = session::endpoint(g, &saved);
    let client = session::client_for(&addr, ca.as_deref())?;
    let mut r = match &a.oidc_token {
        Some(jwt) => client.oidc_login(jwt, a.org.as_deref()).await?,
        None => {
            let username = match a.username {
                Some(u) => u,
                None => prompt("Username: ")?,
            };
            let password = read_password(a.password_stdin, "Password: ")?;
            client
                .login_in(&username, &password, a.org.as_deref())
                .await?
        }
    };
    if r.mfa_required {
        let mfa_token = r
            .mfa_token
            .clone()
            .context("the server asked for MFA without a token")?;
        let code = match a.mfa_code {
            Some(c) => zeroize::Zeroizing::new(c),
            None => zeroize::Zeroizing::new(prompt("Authentication code (or recovery code): ")?),
        };
        r = match client.mfa_verify(&mfa_token, &code).await {
            Err(e) if e.code() == Some("invalid_code") => {
                return Err(anyhow::Error::new(e).context(
                    "the password was right, the code was not: a code works once (the one that confirmed `coffer mfa enroll` is spent), so wait for the next code or use a recovery code; wrong codes count toward the lockout",
                ));
            }
            r => r?,
        };
    }
    let (token, whoami) = r
        .token
        .zip(r.whoami)
        .context("the server did not return a session")?;
    saved.addr = Some(addr);
    saved.ca_cert = ca.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    saved.token = Some(token);
    session::save(&saved)?;
    if g.json {
        return output::json(&whoami);
    }
    println!(
        "Logged in as {} ({}) in organisation {}.",
        whoami.username, whoami.role, whoami.org
    );
    if r.mfa_enrollment_required {
        println!(
            "An organisation you belong to requires MFA: run `coffer mfa enroll` now; nothing else works until you do."
        );
    }
    Ok(())
}

pub(crate) fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}");
    let mut u = String::new();
    std::io::stdin()
        .read_line(&mut u)
        .context("read from stdin")?;
    Ok(u.trim().to_owned())
}

/// A password from stdin (first line) or a prompt without echo.
pub(crate) fn read_password(
    stdin: bool,
    label: &str,
) -> anyhow::Result<zeroize::Zeroizing<String>> {
    Ok(zeroize::Zeroizing::new(if stdin {
        let mut p = String::new();
        std::io::stdin()
            .read_line(&mut p)
            .context("read the password from stdin")?;
        p.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        // The prompt reads the terminal itself, not standard input.
        if std::fs::File::open("/dev/tty").is_err() {
            anyhow::bail!(
                "no terminal to ask for the password: give it on standard input with --password-stdin"
            );
        }
        rpassword::prompt_password(label).context("read the password")?
    }))
}

pub async fn logout(g: &Global) -> anyhow::Result<()> {
    let mut saved = session::load()?;
    if saved.token.is_some() {
        // Forget the local token even if the server cannot be reached.
        let res = session::authed(g)?.logout().await;
        saved.token = None;
        session::save(&saved)?;
        res?;
    }
    output::done(
        g.json,
        serde_json::json!({ "logged_out": true }),
        "Logged out.",
    )
}

pub async fn whoami(g: &Global) -> anyhow::Result<()> {
    let w = session::authed(g)?.whoami().await?;
    if g.json {
        return output::json(&w);
    }
    output::table(
        &["user", "organisation", "role", "session expires"],
        vec![vec![w.username, w.org, w.role, w.session_expires_at]],
    );
    Ok(())
}
