//! What is on disk: no plaintext, and tampering is detected.

use base64::Engine;
use coffer_core::audit::Cx;
use coffer_core::{CoreError, SetParam};
use sqlx::Connection;

use crate::sqlite_fixture;

const CANARY: &str = "CANARY-7f3a9c1e-do-not-store-in-clear";

fn needles() -> Vec<(String, Vec<u8>)> {
    let b = CANARY.as_bytes();
    vec![
        ("text".into(), b.to_vec()),
        (
            "hex".into(),
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
                .into_bytes(),
        ),
        (
            "HEX".into(),
            b.iter()
                .map(|x| format!("{x:02X}"))
                .collect::<String>()
                .into_bytes(),
        ),
        (
            "base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(b)
                .into_bytes(),
        ),
        (
            "base64url".into(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(b)
                .into_bytes(),
        ),
        // A distinctive middle slice catches values split across pages.
        ("slice".into(), b[7..23].to_vec()),
    ]
}

#[tokio::test]
async fn canary_values_never_reach_the_database_files() {
    let f = sqlite_fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    for (i, secret) in [(0, true), (1, false), (2, true)] {
        c.params()
            .set_param(
                &Cx::default(),
                p,
                "app",
                "default",
                SetParam {
                    name: &format!("P{i}"),
                    value: CANARY.as_bytes(),
                    secret: Some(secret),
                },
            )
            .await
            .unwrap();
    }
    c.params()
        .rollback_param(&Cx::default(), p, "app", "default", "P0", 1)
        .await
        .unwrap();
    // The values are really there (decryptable)...
    assert_eq!(
        c.params()
            .get_param(&Cx::default(), p, "app", "default", "P1")
            .await
            .unwrap()
            .value
            .unwrap()
            .expose_secret(),
        CANARY.as_bytes()
    );

    // ...but no file of the database holds them in any common encoding.
    let mut files = 0;
    for entry in std::fs::read_dir(f.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        files += 1;
        for (label, n) in needles() {
            assert!(
                !data.windows(n.len()).any(|w| w == n.as_slice()),
                "{label} canary found in {}",
                path.display()
            );
        }
    }
    assert!(
        files >= 2,
        "expected the database and its WAL, found {files} files"
    );
    assert!(
        std::fs::metadata(f.dir.path().join("coffer.db-wal")).is_ok(),
        "WAL file must be part of the scan"
    );
}

async fn raw(f: &crate::Fixture) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", f.db_path().display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_flipped_byte_on_disk_is_a_generic_integrity_error() {
    let f = sqlite_fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "default",
            SetParam {
                name: "K",
                value: b"value",
                secret: Some(true),
            },
        )
        .await
        .unwrap();
    let mut db = raw(&f).await;
    let (id, mut ct): (Vec<u8>, Vec<u8>) = sqlx::query_as("SELECT id, ciphertext FROM credentials")
        .fetch_one(&mut db)
        .await
        .unwrap();
    ct[80] ^= 0x01;
    sqlx::query("UPDATE credentials SET ciphertext = ? WHERE id = ?")
        .bind(ct)
        .bind(id)
        .execute(&mut db)
        .await
        .unwrap();
    let err = c
        .params()
        .get_param(&Cx::default(), p, "app", "default", "K")
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::Integrity), "{err:?}");
    assert!(!err.to_string().contains("value"));
    assert!(matches!(
        c.params()
            .list_params(&Cx::default(), p, "app", "default", true)
            .await,
        Err(CoreError::Integrity)
    ));
}

#[tokio::test]
async fn swapping_ciphertexts_between_rows_is_detected() {
    let f = sqlite_fixture().await;
    let (c, p) = (&f.coffer, &f.owner);
    c.projects()
        .create_project(&Cx::default(), p, "app")
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "default",
            SetParam {
                name: "A",
                value: b"alpha",
                secret: None,
            },
        )
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "default",
            SetParam {
                name: "B",
                value: b"bravo",
                secret: None,
            },
        )
        .await
        .unwrap();
    c.params()
        .set_param(
            &Cx::default(),
            p,
            "app",
            "default",
            SetParam {
                name: "A",
                value: b"alpha-2",
                secret: None,
            },
        )
        .await
        .unwrap();
    let mut db = raw(&f).await;
    // Point A's current version at B's ciphertext (another record), then at A's own
    // version 1 (another version): both must fail to decrypt.
    let ids: Vec<(Vec<u8>, String, i64)> = sqlx::query_as(
        "SELECT v.credential_id, p.name, v.version FROM param_versions v JOIN params p ON p.id = v.param_id ORDER BY p.name, v.version",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let (a1, a2, b1) = (ids[0].0.clone(), ids[1].0.clone(), ids[2].0.clone());
    let copy = |from: Vec<u8>, to: Vec<u8>| {
        sqlx::query("UPDATE credentials SET ciphertext = (SELECT ciphertext FROM credentials WHERE id = ?) WHERE id = ?").bind(from).bind(to)
    };
    copy(b1.clone(), a2.clone()).execute(&mut db).await.unwrap();
    assert!(matches!(
        c.params()
            .get_param(&Cx::default(), p, "app", "default", "A")
            .await,
        Err(CoreError::Integrity)
    ));
    copy(a1, a2).execute(&mut db).await.unwrap();
    assert!(matches!(
        c.params()
            .get_param(&Cx::default(), p, "app", "default", "A")
            .await,
        Err(CoreError::Integrity)
    ));
    // B itself is untouched.
    assert_eq!(
        c.params()
            .get_param(&Cx::default(), p, "app", "default", "B")
            .await
            .unwrap()
            .value
            .unwrap()
            .expose_secret(),
        b"bravo"
    );
}

#[tokio::test]
async fn history_rows_are_append_only() {
    let f = sqlite_fixture().await;
    f.coffer
        .projects()
        .create_project(&Cx::default(), &f.owner, "app")
        .await
        .unwrap();
    f.coffer
        .params()
        .set_param(
            &Cx::default(),
            &f.owner,
            "app",
            "default",
            SetParam {
                name: "K",
                value: b"v",
                secret: None,
            },
        )
        .await
        .unwrap();
    let mut db = raw(&f).await;
    let r = sqlx::query("UPDATE param_versions SET action = 'set', version = 7")
        .execute(&mut db)
        .await;
    assert!(r.is_err(), "the trigger must refuse updates of history");
}

#[tokio::test]
async fn the_credentials_table_says_nothing_about_ownership() {
    let f = sqlite_fixture().await;
    let mut db = raw(&f).await;
    let cols: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM pragma_table_info('credentials') ORDER BY cid")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let cols: Vec<String> = cols.into_iter().map(|c| c.0).collect();
    assert_eq!(cols, vec!["id", "ciphertext", "key_term"]);
}
