use std::io::Read;

use anyhow::Context;

use crate::cli::{Global, LoginArgs};
use crate::{output, session};

pub async fn login(g: &Global, a: LoginArgs) -> anyhow::Result<()> {
    let mut saved = session::load()?;
    let (addr, ca) = session::endpoint(g, &saved);
    let client = session::client_for(&addr, ca.as_deref())?;
    let username = match a.username {
        Some(u) => u,
        None => {
            eprint!("Username: ");
            let mut u = String::new();
            std::io::stdin()
                .read_line(&mut u)
                .context("read the username")?;
            u.trim().to_owned()
        }
    };
    let password = zeroize::Zeroizing::new(if a.password_stdin {
        let mut p = String::new();
        std::io::stdin()
            .read_to_string(&mut p)
            .context("read the password from stdin")?;
        p.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        rpassword::prompt_password("Password: ").context("read the password")?
    });
    let r = client.login(&username, &password).await?;
    saved.addr = Some(addr);
    saved.ca_cert = ca.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    saved.token = Some(r.token);
    session::save(&saved)?;
    if g.json {
        return output::json(&r.whoami);
    }
    println!(
        "Logged in as {} ({}) in organisation {}.",
        r.whoami.username, r.whoami.role, r.whoami.org
    );
    Ok(())
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
    if !g.json {
        println!("Logged out.");
    }
    Ok(())
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
