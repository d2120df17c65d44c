//! OpenID logins with tokens this test signs itself (an Ed25519 key it publishes as the
//! issuer's key set): claims the real provider in the server tests cannot be made to send.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use coffer_core::audit::Cx;
use coffer_core::oidc::{JwksSource, JwtAlgorithm, OidcIssuer};
use coffer_core::{CoreConfig, CoreError, Role};
use jsonwebtoken::jwk::JwkSet;

use crate::fixture_with;

const ISSUER: &str = "https://idp.test";

#[derive(Debug)]
struct Issuer {
    pkcs8: Vec<u8>,
    jwks: JwkSet,
}

impl Issuer {
    fn new() -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let public = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.public_key());
        let jwks = serde_json::from_value(serde_json::json!({ "keys": [{
            "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig"
        }]}))
        .unwrap();
        Self { pkcs8, jwks }
    }

    /// A token for `sub`, issued `iat_offset` seconds from now, valid for an hour.
    fn token(&self, sub: &str, iat_offset: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut header = jsonwebtoken::Header::new(JwtAlgorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({
                "iss": ISSUER, "aud": "coffer", "sub": sub,
                "iat": now + iat_offset, "exp": now + iat_offset.max(0) + 3600,
            }),
            &jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8),
        )
        .unwrap()
    }
}

#[async_trait::async_trait]
impl JwksSource for Issuer {
    async fn jwks(&self, _issuer: &str, _refresh: bool) -> Result<JwkSet, String> {
        Ok(self.jwks.clone())
    }
}

fn config() -> CoreConfig {
    CoreConfig {
        oidc: vec![OidcIssuer {
            issuer: ISSUER.into(),
            audience: "coffer".into(),
            algorithms: vec![JwtAlgorithm::EdDSA],
            jit: true,
            jit_org: Some("default".into()),
            jit_role: Role::Viewer,
            leeway_secs: 60,
        }],
        ..CoreConfig::default()
    }
}

#[tokio::test]
async fn tokens_issued_in_the_future_are_refused() {
    let f = fixture_with(config()).await;
    let idp = Issuer::new();
    let login = |jwt: String| {
        let c = f.coffer.clone();
        let idp = &idp;
        async move {
            c.identity()
                .login_oidc(&Cx::default(), &jwt, idp, None, "test")
                .await
        }
    };
    for (what, offset) in [("a day ahead", 86_400), ("ten years ahead", 315_360_000)] {
        let e = login(idp.token("alice", offset)).await.unwrap_err();
        assert!(matches!(e, CoreError::BadCredentials), "{what}: {e:?}");
    }
    // Within the allowed clock skew, and in the past: accepted.
    login(idp.token("alice", 30)).await.unwrap();
    login(idp.token("alice", -600)).await.unwrap();
}

/// Users from an issuer are its subjects: two subjects whose names normalise alike are two
/// users, and both log in.
#[tokio::test]
async fn subjects_whose_names_collide_are_still_different_users() {
    let f = fixture_with(config()).await;
    let idp = Issuer::new();
    let mut ids = Vec::new();
    for sub in ["Col5:2e5a31", "col5_2e5a31", "Col5:2e5a31"] {
        let s = f
            .coffer
            .identity()
            .login_oidc(&Cx::default(), &idp.token(sub, 0), &idp, None, "test")
            .await
            .unwrap()
            .session()
            .unwrap();
        ids.push(s.principal.user_id);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(ids[0], ids[1], "two subjects, two users");
    assert_eq!(ids[0], ids[2], "the same subject, the same user");
}
