//! `[seal]`, `[kms]` and `[pkcs11]`: where the root key comes from, and which key services
//! organisations may attach their own keys from.
//!
//! | variable | file key | default |
//! |---|---|---|
//! | COFFER_SEAL__TYPE | seal.type | shamir (or awskms, pkcs11) |
//! | COFFER_SEAL__KEY | seal.key | KMS key id/ARN/alias, or PKCS#11 key label |
//! | COFFER_KMS__REGION | kms.region | none (no KMS) |
//! | COFFER_KMS__ENDPOINT | kms.endpoint | https://kms.REGION.amazonaws.com |
//! | AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN | (none) | required with [kms] |
//! | COFFER_PKCS11__LIBRARY | pkcs11.library | none (no HSM) |
//! | COFFER_PKCS11__TOKEN_LABEL | pkcs11.token_label | |
//! | COFFER_PKCS11__PIN | pkcs11.pin | |

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use coffer_core::seal::{ExternalSeal, KeyProvider, KeyServices, Seal, ShamirSeal};
use coffer_extkeys::{AwsCredentials, Hsm, HsmProvider, KmsClient, KmsConfig, Pkcs11Config};
use serde::Deserialize;
use zeroize::Zeroizing;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealSection {
    #[serde(rename = "type")]
    kind: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsSection {
    region: Option<String>,
    endpoint: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Section {
    library: Option<PathBuf>,
    token_label: Option<String>,
    pin: Option<String>,
}

impl std::fmt::Debug for Pkcs11Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Section")
            .field("library", &self.library)
            .field("token_label", &self.token_label)
            .finish_non_exhaustive()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl SealSection {
    pub fn apply_env(&mut self) {
        if let Some(v) = env("COFFER_SEAL__TYPE") {
            self.kind = Some(v);
        }
        if let Some(v) = env("COFFER_SEAL__KEY") {
            self.key = Some(v);
        }
    }
}

impl KmsSection {
    pub fn apply_env(&mut self) {
        if let Some(v) = env("COFFER_KMS__REGION") {
            self.region = Some(v);
        }
        if let Some(v) = env("COFFER_KMS__ENDPOINT") {
            self.endpoint = Some(v);
        }
    }
}

impl Pkcs11Section {
    pub fn apply_env(&mut self) {
        if let Some(v) = env("COFFER_PKCS11__LIBRARY") {
            self.library = Some(v.into());
        }
        if let Some(v) = env("COFFER_PKCS11__TOKEN_LABEL") {
            self.token_label = Some(v);
        }
        if let Some(v) = env("COFFER_PKCS11__PIN") {
            self.pin = Some(v);
        }
    }
}

/// Build the seal and the key services. Connects to the HSM (a wrong PIN fails here); the
/// KMS is first contacted when the server unseals.
pub fn build(
    seal: &SealSection,
    kms: &KmsSection,
    pkcs11: &Pkcs11Section,
) -> anyhow::Result<(Arc<dyn Seal>, KeyServices)> {
    let mut providers: Vec<Arc<dyn KeyProvider>> = Vec::new();
    let mut kms_client = None;
    if let Some(region) = &kms.region {
        let client = KmsClient::new(KmsConfig {
            region: region.clone(),
            endpoint: kms.endpoint.clone(),
            credentials: AwsCredentials::from_env()?,
        })?;
        kms_client = Some(client.clone());
        providers.push(Arc::new(client));
    } else {
        anyhow::ensure!(kms.endpoint.is_none(), "kms.endpoint needs kms.region");
    }
    let mut hsm = None;
    if let Some(library) = &pkcs11.library {
        let (Some(token_label), Some(pin)) = (&pkcs11.token_label, &pkcs11.pin) else {
            anyhow::bail!("[pkcs11] needs library, token_label and pin");
        };
        let h = Hsm::open(&Pkcs11Config {
            library: library.clone(),
            token_label: token_label.clone(),
            pin: Zeroizing::new(pin.clone()),
        })?;
        hsm = Some(h.clone());
        providers.push(Arc::new(HsmProvider(h)));
    }
    let services = KeyServices::new(providers);
    let kind = seal.kind.as_deref().unwrap_or("shamir");
    let seal: Arc<dyn Seal> = match kind {
        "shamir" => {
            anyhow::ensure!(
                seal.key.is_none(),
                "seal.key is only for awskms and pkcs11 seals"
            );
            Arc::new(ShamirSeal)
        }
        "awskms" | "pkcs11" => {
            let key = seal
                .key
                .as_deref()
                .with_context(|| format!("seal.type = \"{kind}\" needs seal.key"))?;
            match kind {
                "awskms" => {
                    anyhow::ensure!(kms_client.is_some(), "the awskms seal needs [kms] region")
                }
                _ => {
                    let h = hsm.as_ref().context("the pkcs11 seal needs [pkcs11]")?;
                    if h.ensure_key(key)? {
                        tracing::warn!(
                            label = key,
                            "created the PKCS#11 seal key (AES-256, not extractable)"
                        );
                    }
                }
            }
            Arc::new(ExternalSeal::new(
                services.resolve(&format!("{kind}:{key}"))?,
            )?)
        }
        other => anyhow::bail!("seal.type must be shamir, awskms or pkcs11, not {other:?}"),
    };
    Ok((seal, services))
}
