//! A change and its audit event commit together, on both backends: if the event cannot be
//! appended the change is not applied, and a change that fails leaves no success event.

use coffer_core::audit::{AuditFilter, Cx};
use std::time::Duration;

use coffer_core::{CoreConfig, CoreError, Role, SetParam};
use sqlx::Connection;

use crate::{Fixture, fixture, fixture_with};

/// Make every audit append fail (as a full disk or a broken table would), until the
/// returned guard's `lift` is called.
async fn refuse_audit_appends(f: &Fixture) -> Outage {
    refuse_inserts(f, "audit_log").await
}

/// Make every insert into `table` fail, until the returned guard's `lift` is called.
async fn refuse_inserts(f: &Fixture, table: &'static str) -> Outage {
    refuse_inserts_in(f.dir.path(), f.pg.as_deref(), table).await
}

/// [`refuse_inserts`] in the database of the service in `dir` (on PostgreSQL: at `pg`).
async fn refuse_inserts_in(dir: &std::path::Path, pg: Option<&str>, table: &'static str) -> Outage {
    match pg {
        None => {
            let mut db = sqlx::SqliteConnection::connect(&format!(
                "sqlite://{}",
                dir.join("coffer.db").display()
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
        .audit()
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
    c.projects().create_project(&cx, p, "web").await.unwrap();
    c.params()
        .set_param(&cx, p, "web", "default", set("TOKEN", b"v1"))
        .await
        .unwrap();

    let outage = refuse_audit_appends(&f).await;
    let err = c
        .params()
        .set_param(&cx, p, "web", "default", set("TOKEN", b"v2"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::AuditUnavailable), "{err:?}");
    let err = c
        .projects()
        .create_project(&cx, p, "api")
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::AuditUnavailable), "{err:?}");
    let err = c
        .params()
        .get_param(&cx, p, "web", "default", "TOKEN")
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoreError::AuditUnavailable),
        "a read that cannot be recorded is not answered: {err:?}"
    );
    outage.lift().await;

    let v = c
        .params()
        .get_param(&cx, p, "web", "default", "TOKEN")
        .await
        .unwrap();
    assert_eq!(v.value.unwrap().expose_secret(), b"v1");
    assert_eq!(v.version, 1, "the refused write left no version");
    let projects = c.projects().list_projects(&cx, p).await.unwrap();
    assert!(projects.iter().all(|x| x.name != "api"));
    assert_eq!(
        events_of(&f, "param.set").await,
        vec![("success".to_owned(), None)],
        "exactly the one applied write is recorded"
    );
    assert!(c.audit().audit_verify(&cx, p).await.unwrap().ok);
}

/// A project and its default environment are one change: if the environment cannot be
/// stored, neither is the project, and the attempt is recorded as a failure.
#[tokio::test]
async fn a_project_exists_with_its_default_environment_or_not_at_all() {
    let f = fixture().await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    let outage = refuse_inserts(&f, "environments").await;
    c.projects()
        .create_project(&cx, p, "web")
        .await
        .unwrap_err();
    outage.lift().await;
    assert!(c.projects().list_projects(&cx, p).await.unwrap().is_empty());
    assert_eq!(
        events_of(&f, "project.create").await,
        vec![("failure".to_owned(), Some("internal".to_owned()))]
    );
    c.projects().create_project(&cx, p, "web").await.unwrap();
    let envs = c.projects().list_envs(&cx, p, "web").await.unwrap();
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
    c.identity()
        .create_org_as(&cx, p, "second")
        .await
        .unwrap_err();
    outage.lift().await;
    let names = |orgs: Vec<coffer_core::members::OrgMembershipView>| {
        orgs.into_iter().map(|o| o.name).collect::<Vec<_>>()
    };
    assert!(!names(c.identity().my_orgs(&cx, p).await.unwrap()).contains(&"second".to_owned()));
    assert_eq!(
        events_of(&f, "org.create").await,
        vec![("failure".to_owned(), Some("internal".to_owned()))]
    );
    // The name is free: nothing was half-written.
    c.identity().create_org_as(&cx, p, "second").await.unwrap();
    assert!(names(c.identity().my_orgs(&cx, p).await.unwrap()).contains(&"second".to_owned()));
}

#[tokio::test]
async fn a_failed_change_leaves_a_failure_event_and_no_success() {
    let f = fixture().await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    c.projects().create_project(&cx, p, "web").await.unwrap();
    let err = c
        .params()
        .set_param(&cx, p, "web", "nope", set("TOKEN", b"v1"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::NotFound { .. }), "{err:?}");
    let err = c
        .params()
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
    c.projects().create_project(&cx, p, "web").await.unwrap();
    let written = c
        .params()
        .set_param(&cx, p, "web", "default", set("TOKEN", b"v1"))
        .await
        .unwrap();
    let events = f
        .coffer
        .audit()
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

/// A newcomer's account is made with the invitation's use and its event: if the event
/// cannot be appended, no account is left behind holding the chosen name.
#[tokio::test]
async fn an_invited_newcomers_account_exists_with_the_invitations_use_or_not_at_all() {
    let f = fixture().await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    let inv = c
        .identity()
        .invite(&cx, p, "newcomer@example.com", Role::Viewer)
        .await
        .unwrap();
    let tok = inv.token.unwrap().expose_secret().to_owned();
    let outage = refuse_audit_appends(&f).await;
    let err = c
        .identity()
        .accept_invitation(&cx, &tok, Some("newcomer"), "a long enough password")
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::AuditUnavailable), "{err:?}");
    outage.lift().await;
    // The name is still free and the invitation unused.
    c.identity()
        .accept_invitation(&cx, &tok, Some("newcomer"), "a long enough password")
        .await
        .unwrap();
    assert_eq!(
        events_of(&f, "invitation.accept").await,
        vec![("success".to_owned(), None)]
    );
}

/// The key jobs' changes (a rotation the policy starts, the rewrap's end, destroying
/// retired terms) commit with their `system` events, or not at all.
#[tokio::test]
async fn key_jobs_record_their_events_with_their_changes() {
    let f = fixture_with(CoreConfig {
        key_cache_ttl: Duration::from_millis(100),
        ..CoreConfig::default()
    })
    .await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    c.projects().create_project(&cx, p, "web").await.unwrap();
    c.params()
        .set_param(&cx, p, "web", "default", set("TOKEN", b"v1"))
        .await
        .unwrap();
    let term = |s: coffer_core::KeyStatus| (s.active_term, s.terms.len());

    let outage = refuse_audit_appends(&f).await;
    let err = c.keys().rotate_org_key(p.org_id, "age").await.unwrap_err();
    assert!(matches!(err, CoreError::AuditUnavailable), "{err:?}");
    outage.lift().await;
    assert_eq!(term(c.keys().key_status(&cx, p).await.unwrap()), (1, 1));

    c.keys().rotate_org_key(p.org_id, "age").await.unwrap();
    let outage = refuse_audit_appends(&f).await;
    c.keys().run_key_maintenance().await.unwrap_err();
    outage.lift().await;
    let s = c.keys().key_status(&cx, p).await.unwrap();
    assert!(
        s.rotation.unwrap().finished_at.is_none(),
        "the rewrap's last batch did not commit without its event"
    );
    assert_eq!(term(c.keys().key_status(&cx, p).await.unwrap()), (2, 2));

    c.keys().run_key_maintenance().await.unwrap();
    assert!(
        c.keys()
            .key_status(&cx, p)
            .await
            .unwrap()
            .rotation
            .unwrap()
            .finished_at
            .is_some()
    );
    // Term 1 is retired once every node's key cache has expired.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let outage = refuse_audit_appends(&f).await;
    c.keys().run_key_maintenance().await.unwrap_err();
    outage.lift().await;
    assert_eq!(term(c.keys().key_status(&cx, p).await.unwrap()), (2, 2));
    c.keys().run_key_maintenance().await.unwrap();
    assert_eq!(term(c.keys().key_status(&cx, p).await.unwrap()), (2, 1));

    for action in ["key.rotated", "key.rewrap_finished", "key.terms_destroyed"] {
        assert_eq!(
            events_of(&f, action).await,
            vec![("success".to_owned(), None)],
            "{action}: one event, for the change that happened"
        );
    }
    assert!(c.audit().audit_verify(&cx, p).await.unwrap().ok);
}

/// Initialising stores the seal configuration and the first account together: a server is
/// never initialised without an account to log in with.
#[tokio::test]
async fn a_server_is_initialised_with_its_first_account_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (c, pg) = coffer_testkit::open_coffer(dir.path(), CoreConfig::default()).await;
    let cx = Cx::default();
    let outage = refuse_inserts_in(dir.path(), pg.as_deref(), "memberships").await;
    c.init(&cx, 3, 2).await.unwrap_err();
    outage.lift().await;
    assert!(!c.seal_status().await.unwrap().initialized);
    let init = c.init(&cx, 3, 2).await.unwrap();
    for share in &init.shares[..2] {
        c.unseal(&cx, share).await.unwrap();
    }
    let login = c
        .identity()
        .login(
            &cx,
            &init.bootstrap.username,
            init.bootstrap.password.expose_secret(),
            None,
            "test",
        )
        .await
        .unwrap();
    assert_eq!(login.session().unwrap().principal.role, Role::Owner);
}

/// An invitation and the message that delivers it are one change: if the message cannot
/// be queued, there is no invitation (and no success event) either.
#[tokio::test]
async fn an_invitation_exists_with_its_message_or_not_at_all() {
    let f = fixture().await;
    let (c, p, cx) = (&f.coffer, &f.owner, Cx::default());
    let outage = refuse_inserts(&f, "outbox").await;
    c.identity()
        .invite(&cx, p, "late@example.com", Role::Viewer)
        .await
        .unwrap_err();
    outage.lift().await;
    assert!(
        c.identity()
            .list_invitations(&cx, p)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        events_of(&f, "invitation.create").await,
        vec![("failure".to_owned(), Some("internal".to_owned()))]
    );
    c.identity()
        .invite(&cx, p, "late@example.com", Role::Viewer)
        .await
        .unwrap();
    assert_eq!(
        c.identity().list_invitations(&cx, p).await.unwrap().len(),
        1
    );
}

/// Turning MFA on commits with its recovery codes and the end of the user's other
/// sessions: if the codes cannot be stored, MFA stays off and the other sessions stay.
#[tokio::test]
async fn mfa_is_on_with_its_recovery_codes_and_other_sessions_ended_or_not_at_all() {
    use coffer_core::mfa::totp_code_at;
    let f = fixture().await;
    let (c, cx) = (&f.coffer, Cx::default());
    c.identity()
        .create_member(&f.owner, "mo", "mo long password", Role::Viewer)
        .await
        .unwrap();
    let login = || async {
        c.identity()
            .login(&cx, "mo", "mo long password", None, "test")
            .await
            .unwrap()
            .session()
            .unwrap()
    };
    let (this, other) = (login().await, login().await);
    let p = this.principal;
    let e = c
        .identity()
        .mfa_enroll_start(&cx, &p, "mo long password")
        .await
        .unwrap();
    let secret = e.secret_base32.expose_secret().to_owned();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let outage = refuse_inserts(&f, "recovery_codes").await;
    c.identity()
        .mfa_enroll_confirm(&cx, &p, &totp_code_at(&secret, now()).unwrap())
        .await
        .unwrap_err();
    outage.lift().await;
    assert!(
        c.identity()
            .authenticate(other.token.expose_secret())
            .await
            .is_ok(),
        "the other session was not ended"
    );
    assert!(
        login().await.principal.user_id == p.user_id,
        "MFA is still off: the password alone logs in"
    );
    // (That code's step is spent: the next one.)
    let codes = c
        .identity()
        .mfa_enroll_confirm(&cx, &p, &totp_code_at(&secret, now() + 30).unwrap())
        .await
        .unwrap();
    assert_eq!(codes.len(), 10);
    assert!(
        c.identity()
            .authenticate(other.token.expose_secret())
            .await
            .is_err()
    );
}
