//! A change and its audit event commit together, on both backends: if the event cannot be
//! appended the change is not applied, and a change that fails leaves no success event.

use coffer_core::audit::{AuditFilter, Cx};
use coffer_core::{CoreError, SetParam};
use sqlx::Connection;

use crate::{Fixture, fixture};

/// Make every audit append fail (as a full disk or a broken table would), until the
/// returned guard's `lift` is called.
async fn refuse_audit_appends(f: &Fixture) -> Outage {
    refuse_inserts(f, "audit_events").await
}

/// Make every insert into `table` fail, until the returned guard's `lift` is called.
async fn refuse_inserts(f: &Fixture, table: &'static str) -> Outage {
    match &f.pg {
        None => {
            let mut db = sqlx::SqliteConnection::connect(&format!(
                "sqlite://{}",
                f.dir.path().join("coffer.db").display()
            ))
            .await
            .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TRIGGER outage BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'refused'); END")))
                .execute(&mut db)
                .await
                .unwrap();
            Outage::Sqlite(db)
        }
        Some(url) => {
            // As the database's owner: the service's own role may not create triggers.
            let mut db = sqlx::PgConnection::connect(&coffer_testkit::pg_admin_url_for(url))
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE FUNCTION outage() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
                 CREATE TRIGGER outage BEFORE INSERT ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION outage();"
            )))
            .execute(&mut db)
            .await
            .unwrap();
            Outage::Pg(db, table)
        }
    }
}

enum Outage {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection, &'static str),
}

impl Outage {
    async fn lift(self) {
        match self {
            Outage::Sqlite(mut db) => {
                sqlx::query("DROP TRIGGER outage")
                    .execute(&mut db)
                    .await
                    .unwrap();
            }
            Outage::Pg(mut db, table) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP TRIGGER outage ON {table}; DROP FUNCTION outage();"
                )))
                .execute(&mut db)
                .await
                .unwrap();
            }
        }
    }
}

/// The organisation's events of `action`, as (outcome, error code).
async fn events_of(f: &Fixture, action: &str) -> Vec<(String, Option<String>)> {
    f.coffer
        .audit_list(
            &Cx::default(),
            &f.owner,
            AuditFilter {
                action: Some(action.to_owned()),
                limit: 1000,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.event.outcome, r.event.error_code))
        .collect()
}

fn set<'a>(name: &'a str, value: &'a [u8]) -> SetParam<'a> {
    SetParam {
        name,
        value,
        secret: Some(true),
    }
}

#[tokio::test]
async fn a_change_whose_event_cannot_be_appended_is_not_applied() {
    let f = fixture().await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    c.create_project(&cx, p, "web").await.unwrap();
    c.set_param(&cx, p, "web", "default", set("TOKEN", b"v1"))
        .await
        .unwrap();

    let outage = refuse_audit_appends(&f).await;
    let err = c
        .set_param(&cx, p, "web", "default", set("TOKEN", b"v2"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::AuditUnavailable), "{err:?}");
    let err = c.create_project(&cx, p, "api").await.unwrap_err();
    assert!(matches!(err, CoreError::AuditUnavailable), "{err:?}");
    let err = c
        .get_param(&cx, p, "web", "default", "TOKEN")
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoreError::AuditUnavailable),
        "a read that cannot be recorded is not answered: {err:?}"
    );
    outage.lift().await;

    let v = c
        .get_param(&cx, p, "web", "default", "TOKEN")
        .await
        .unwrap();
    assert_eq!(v.value.unwrap().expose_secret(), b"v1");
    assert_eq!(v.version, 1, "the refused write left no version");
    let projects = c.list_projects(&cx, p).await.unwrap();
    assert!(projects.iter().all(|x| x.name != "api"));
    assert_eq!(
        events_of(&f, "param.set").await,
        vec![("success".to_owned(), None)],
        "exactly the one applied write is recorded"
    );
    assert!(c.audit_verify(&cx, p).await.unwrap().ok);
}

/// A project and its default environment are one change: if the environment cannot be
/// stored, neither is the project, and the attempt is recorded as a failure.
#[tokio::test]
async fn a_project_exists_with_its_default_environment_or_not_at_all() {
    let f = fixture().await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    let outage = refuse_inserts(&f, "environments").await;
    c.create_project(&cx, p, "web").await.unwrap_err();
    outage.lift().await;
    assert!(c.list_projects(&cx, p).await.unwrap().is_empty());
    assert_eq!(
        events_of(&f, "project.create").await,
        vec![("failure".to_owned(), Some("internal".to_owned()))]
    );
    c.create_project(&cx, p, "web").await.unwrap();
    let envs = c.list_envs(&cx, p, "web").await.unwrap();
    assert_eq!(
        envs.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["default"]
    );
}

/// An organisation, its key and its Owner are one change with `org.create`: if the Owner's
/// membership cannot be stored, no organisation is left behind without one.
#[tokio::test]
async fn an_organisation_exists_with_its_owner_or_not_at_all() {
    let f = fixture().await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    let outage = refuse_inserts(&f, "memberships").await;
    c.create_org_as(&cx, p, "second").await.unwrap_err();
    outage.lift().await;
    let names = |orgs: Vec<coffer_core::members::OrgMembershipView>| {
        orgs.into_iter().map(|o| o.name).collect::<Vec<_>>()
    };
    assert!(!names(c.my_orgs(&cx, p).await.unwrap()).contains(&"second".to_owned()));
    assert_eq!(
        events_of(&f, "org.create").await,
        vec![("failure".to_owned(), Some("internal".to_owned()))]
    );
    // The name is free: nothing was half-written.
    c.create_org_as(&cx, p, "second").await.unwrap();
    assert!(names(c.my_orgs(&cx, p).await.unwrap()).contains(&"second".to_owned()));
}

#[tokio::test]
async fn a_failed_change_leaves_a_failure_event_and_no_success() {
    let f = fixture().await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    c.create_project(&cx, p, "web").await.unwrap();
    let err = c
        .set_param(&cx, p, "web", "nope", set("TOKEN", b"v1"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::NotFound { .. }), "{err:?}");
    let err = c
        .rollback_param(&cx, p, "web", "default", "TOKEN", 3)
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::NotFound { .. }), "{err:?}");
    assert_eq!(
        events_of(&f, "param.set").await,
        vec![("failure".to_owned(), Some("not_found".to_owned()))]
    );
    assert_eq!(
        events_of(&f, "param.rollback").await,
        vec![("failure".to_owned(), Some("not_found".to_owned()))]
    );
}

#[tokio::test]
async fn a_change_and_its_event_name_the_same_parameter() {
    let f = fixture().await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    c.create_project(&cx, p, "web").await.unwrap();
    let written = c
        .set_param(&cx, p, "web", "default", set("TOKEN", b"v1"))
        .await
        .unwrap();
    let events = f
        .coffer
        .audit_list(
            &cx,
            p,
            AuditFilter {
                action: Some("param.set".into()),
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    let [ev] = events.as_slice() else {
        panic!("one event per write: {events:?}")
    };
    assert_eq!(ev.event.target.param_id, Some(written.param_id));
    assert_eq!(ev.event.target.path(), "web/default/TOKEN");
    assert_eq!(ev.event.actor.id, Some(p.user_id));
    assert!(cx.recorded(), "the operation marked its request recorded");
}
