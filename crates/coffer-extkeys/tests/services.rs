//! The key services against real peers: AWS KMS as `moto_server` and a SoftHSM2 token, both
//! local (scripts/test.sh installs them).

// Test helpers panic on unexpected failures by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_extkeys::{AwsCredentials, Hsm, KmsClient, KmsConfig, Pkcs11Config};
use coffer_seal::{EncryptionContext, SealError};
use coffer_testkit::{MotoKms, SOFTHSM_LIBRARY, SoftHsm};
use zeroize::Zeroizing;

fn ctx(org: &str) -> EncryptionContext {
    EncryptionContext::from([("coffer:org".to_owned(), org.to_owned())])
}

fn is_unavailable(r: Result<impl std::fmt::Debug, SealError>) -> bool {
    matches!(r, Err(SealError::KeyUnavailable { .. }))
}

#[tokio::test]
async fn kms_binds_the_context_and_honours_revocation() {
    let moto = MotoKms::start();
    let client = moto.client();
    let key = moto.create_key().await;
    let blob = client
        .encrypt(&key, b"tenant key bytes", &ctx("a"))
        .await
        .unwrap();
    assert!(!blob.windows(16).any(|w| w == b"tenant key bytes"));
    assert_eq!(
        client
            .decrypt(&key, &blob, &ctx("a"))
            .await
            .unwrap()
            .as_slice(),
        b"tenant key bytes"
    );
    // Another organisation's context does not open it.
    assert!(is_unavailable(client.decrypt(&key, &blob, &ctx("b")).await));
    // Nor does another key.
    let other = moto.create_key().await;
    assert!(is_unavailable(
        client.decrypt(&other, &blob, &ctx("a")).await
    ));

    moto.set_enabled(&key, false).await;
    assert!(is_unavailable(client.decrypt(&key, &blob, &ctx("a")).await));
    moto.set_enabled(&key, true).await;
    assert_eq!(
        client
            .decrypt(&key, &blob, &ctx("a"))
            .await
            .unwrap()
            .as_slice(),
        b"tenant key bytes"
    );
    assert!(is_unavailable(
        client
            .encrypt("11111111-2222-3333-4444-555555555555", b"x", &ctx("a"))
            .await
    ));
}

#[tokio::test]
async fn kms_generates_data_keys_bound_to_the_context() {
    let moto = MotoKms::start();
    let client = moto.client();
    let key = moto.create_key().await;
    let (plain, blob) = client.generate_data_key(&key, &ctx("root")).await.unwrap();
    assert_eq!(plain.len(), 32);
    let (other, _) = client.generate_data_key(&key, &ctx("root")).await.unwrap();
    assert_ne!(plain.as_slice(), other.as_slice(), "a new key every time");
    assert_eq!(
        client
            .decrypt(&key, &blob, &ctx("root"))
            .await
            .unwrap()
            .as_slice(),
        plain.as_slice()
    );
    assert!(is_unavailable(
        client.decrypt(&key, &blob, &ctx("org")).await
    ));
}

#[test]
fn kms_refuses_plain_http_beyond_loopback() {
    let r = KmsClient::new(KmsConfig {
        region: "us-east-1".into(),
        endpoint: Some("http://kms.example.com/".into()),
        credentials: AwsCredentials::new("a".into(), "b".into(), None),
    });
    assert!(matches!(r, Err(SealError::Config(_))));
}

#[tokio::test]
async fn kms_unreachable_is_not_a_revocation() {
    let port = coffer_testkit::free_port();
    let client = KmsClient::new(KmsConfig {
        region: "us-east-1".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}/")),
        credentials: AwsCredentials::new("a".into(), "b".into(), None),
    })
    .unwrap();
    assert!(matches!(
        client.encrypt("k", b"x", &ctx("a")).await,
        Err(SealError::Unreachable(_))
    ));
}

#[test]
fn hsm_keys_stay_inside_bind_the_context_and_can_be_disabled() {
    let h = SoftHsm::open();
    let label = "extkeys-test-key";
    assert!(h.ensure_key(label).unwrap(), "created on first use");
    assert!(!h.ensure_key(label).unwrap(), "reused afterwards");
    let blob = h.encrypt(label, b"root key bytes", b"aad-a").unwrap();
    assert!(!blob.windows(14).any(|w| w == b"root key bytes"));
    assert_eq!(
        h.decrypt(label, &blob, b"aad-a").unwrap().as_slice(),
        b"root key bytes"
    );
    assert!(is_unavailable(h.decrypt(label, &blob, b"aad-b")));
    let mut tampered = blob.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 1;
    }
    assert!(is_unavailable(h.decrypt(label, &tampered, b"aad-a")));
    assert!(is_unavailable(h.decrypt("no-such-key", &blob, b"aad-a")));

    h.set_key_enabled(label, false).unwrap();
    assert!(is_unavailable(h.decrypt(label, &blob, b"aad-a")));
    h.set_key_enabled(label, true).unwrap();
    assert_eq!(
        h.decrypt(label, &blob, b"aad-a").unwrap().as_slice(),
        b"root key bytes"
    );

    // The device forgets the login (a restart): the next operation logs in again.
    h.logout().unwrap();
    assert_eq!(
        h.decrypt(label, &blob, b"aad-a").unwrap().as_slice(),
        b"root key bytes"
    );
    h.logout().unwrap();
    let again = h.encrypt(label, b"after a restart", b"aad-a").unwrap();
    assert_eq!(
        h.decrypt(label, &again, b"aad-a").unwrap().as_slice(),
        b"after a restart"
    );
}

#[test]
fn hsm_token_must_exist() {
    // The module sees the tokens that exist when a process first loads it: make the test
    // token first, as every other test here does.
    SoftHsm::shared();
    let r = Hsm::open(&Pkcs11Config {
        library: SOFTHSM_LIBRARY.into(),
        token_label: "no-such-token".into(),
        pin: Zeroizing::new("x".into()),
    });
    assert!(matches!(r, Err(SealError::Config(_))));
}

/// The requests are signed correctly: a moto that verifies every SigV4 signature (with
/// botocore's own signer, an independent implementation) accepts Coffer's, and refuses them
/// once the secret key is wrong.
#[tokio::test]
async fn kms_requests_carry_valid_sigv4_signatures() {
    // Four unauthenticated actions to set up a user, its access key, its policy and a key.
    let moto = MotoKms::start_checking_signatures_after(Some(4));
    moto.iam(&[("Action", "CreateUser"), ("UserName", "coffer")])
        .await;
    let xml = moto
        .iam(&[("Action", "CreateAccessKey"), ("UserName", "coffer")])
        .await;
    let between = |tag: &str| {
        let open = format!("<{tag}>");
        let start = xml.find(&open).unwrap() + open.len();
        let end = xml[start..].find(&format!("</{tag}>")).unwrap();
        xml[start..start + end].to_owned()
    };
    let (id, secret) = (between("AccessKeyId"), between("SecretAccessKey"));
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#;
    moto.iam(&[
        ("Action", "PutUserPolicy"),
        ("UserName", "coffer"),
        ("PolicyName", "kms"),
        ("PolicyDocument", policy),
    ])
    .await;
    let key = moto.create_key().await;

    let client = |secret: &str| {
        KmsClient::new(KmsConfig {
            region: "us-east-1".into(),
            endpoint: Some(moto.endpoint()),
            credentials: AwsCredentials::new(id.clone(), secret.into(), None),
        })
        .unwrap()
    };
    let good = client(&secret);
    let blob = good.encrypt(&key, b"signed", &ctx("org-a")).await.unwrap();
    assert_eq!(
        good.decrypt(&key, &blob, &ctx("org-a"))
            .await
            .unwrap()
            .as_slice(),
        b"signed"
    );
    let forged = client("not-the-secret");
    let e = forged
        .encrypt(&key, b"forged", &ctx("org-a"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, SealError::Service(ref m) if m.contains("SignatureDoesNotMatch")),
        "{e:?}"
    );
}
