use crate::cli::{EnvCmd, Global, ProjectCmd};
use crate::{output, session};

pub async fn project(g: &Global, c: ProjectCmd) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    match c {
        ProjectCmd::List => {
            let v = client.projects().await?;
            if g.json {
                return output::json(&v);
            }
            output::table(
                &["project", "created"],
                v.into_iter().map(|p| vec![p.name, p.created_at]).collect(),
            );
        }
        ProjectCmd::Create { name } => {
            let p = client.create_project(&name).await?;
            if g.json {
                return output::json(&p);
            }
            println!("Created project {} with environment `default`.", p.name);
        }
    }
    Ok(())
}

pub async fn env(g: &Global, c: EnvCmd) -> anyhow::Result<()> {
    let client = session::authed(g)?;
    match c {
        EnvCmd::List { project } => {
            let v = client.envs(&project).await?;
            if g.json {
                return output::json(&v);
            }
            output::table(
                &["environment", "inherits from", "created"],
                v.into_iter()
                    .map(|e| vec![e.name, e.parent.unwrap_or_else(|| "-".into()), e.created_at])
                    .collect(),
            );
        }
        EnvCmd::Create {
            name,
            project,
            parent,
        } => {
            let e = client
                .create_env(&project, &name, parent.as_deref())
                .await?;
            if g.json {
                return output::json(&e);
            }
            println!(
                "Created environment {} (inherits from {}).",
                e.name,
                e.parent.unwrap_or_else(|| "-".into())
            );
        }
    }
    Ok(())
}
