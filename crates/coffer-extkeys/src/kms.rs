//! AWS KMS through its JSON API, signed with SigV4 (aws-sigv4 + reqwest, no SDK): only the
//! three calls Coffer makes. Every plaintext travels with an encryption context, which KMS
//! binds to the ciphertext as additional authenticated data and records in CloudTrail.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use zeroize::Zeroizing;

use coffer_seal::{EncryptionContext, ExternalKey, KeyProvider, SealError};

/// Static AWS credentials. Read from the usual `AWS_*` environment variables.
#[derive(Clone)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl AwsCredentials {
    pub fn new(
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id,
            secret_access_key: Zeroizing::new(secret_access_key),
            session_token: session_token.map(Zeroizing::new),
        }
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Result<Self, SealError> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Ok(Self::new(id, secret, var("AWS_SESSION_TOKEN"))),
            _ => Err(SealError::Config(
                "AWS KMS needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
                    .into(),
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct KmsConfig {
    pub region: String,
    /// Default `https://kms.<region>.amazonaws.com`; set for a VPC endpoint or a test double.
    pub endpoint: Option<String>,
    pub credentials: AwsCredentials,
}

/// A KMS client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KmsClient {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    credentials: Arc<AwsCredentials>,
}

#[derive(Deserialize)]
struct EncryptOut {
    #[serde(rename = "CiphertextBlob")]
    blob: String,
}

#[derive(Deserialize)]
struct DecryptOut {
    #[serde(rename = "Plaintext")]
    plaintext: Zeroizing<String>,
    #[serde(rename = "KeyId")]
    key_id: String,
}

#[derive(Deserialize)]
struct GenerateOut {
    #[serde(rename = "CiphertextBlob")]
    blob: String,
    #[serde(rename = "Plaintext")]
    plaintext: Zeroizing<String>,
}

#[derive(Deserialize)]
struct DescribeOut {
    #[serde(rename = "KeyMetadata")]
    meta: KeyMetadata,
}

#[derive(Deserialize)]
struct KeyMetadata {
    #[serde(rename = "KeyState")]
    state: String,
    #[serde(rename = "Arn")]
    arn: String,
}

#[derive(Deserialize)]
struct ErrorOut {
    #[serde(rename = "__type", default)]
    kind: String,
    #[serde(alias = "Message", default)]
    message: String,
}

/// KMS errors that mean "this key cannot be used now": disabled, pending deletion, denied
/// by policy, deleted, or a ciphertext that is not for it. A customer revoking their key
/// produces one of these.
const KEY_UNAVAILABLE: &[&str] = &[
    "DisabledException",
    "KMSInvalidStateException",
    "AccessDeniedException",
    "NotFoundException",
    "KeyUnavailableException",
    "IncorrectKeyException",
    "InvalidCiphertextException",
    "InvalidKeyUsageException",
];

impl KmsClient {
    pub fn new(cfg: KmsConfig) -> Result<Self, SealError> {
        let endpoint = cfg
            .endpoint
            .unwrap_or_else(|| format!("https://kms.{}.amazonaws.com/", cfg.region));
        let url = reqwest::Url::parse(&endpoint)
            .map_err(|_| SealError::Config(format!("the KMS endpoint {endpoint} is not a URL")))?;
        let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if url.scheme() != "https" && !loopback {
            return Err(SealError::Config(
                "the KMS endpoint must use https (plain http only on 127.0.0.1)".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SealError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            endpoint: url.to_string(),
            region: cfg.region,
            credentials: Arc::new(cfg.credentials),
        })
    }

    /// Encrypt up to 4 KiB under `key_id` (id, ARN or alias).
    pub async fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, SealError> {
        #[derive(serde::Serialize)]
        struct EncryptIn<'a> {
            #[serde(rename = "KeyId")]
            key_id: &'a str,
            #[serde(rename = "Plaintext")]
            plaintext: &'a str,
            #[serde(rename = "EncryptionContext")]
            context: &'a EncryptionContext,
        }
        // The key travels base64-encoded: every copy made here is wiped on drop (the HTTP
        // client's own send buffer is beyond reach).
        let encoded = Zeroizing::new(B64.encode(plaintext));
        let body = Zeroizing::new(
            serde_json::to_vec(&EncryptIn {
                key_id,
                plaintext: &encoded,
                context,
            })
            .map_err(|_| SealError::Service("encode request".into()))?,
        );
        let out: EncryptOut = self.call(key_id, "Encrypt", &body).await?;
        B64.decode(out.blob)
            .map_err(|_| SealError::Service("KMS returned a malformed ciphertext".into()))
    }

    /// Decrypt a blob made by [`KmsClient::encrypt`] with the same `key_id` and context.
    /// The key must be enabled: this is checked explicitly (DescribeKey) as well as by KMS,
    /// so a customer's revocation takes effect even with a KMS that does not enforce it on
    /// Decrypt.
    pub async fn decrypt(
        &self,
        key_id: &str,
        blob: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let arn = self.ensure_enabled(key_id).await?;
        let body = serde_json::to_vec(&serde_json::json!({
            "KeyId": key_id,
            "CiphertextBlob": B64.encode(blob),
            "EncryptionContext": context,
        }))
        .map_err(|_| SealError::Service("encode request".into()))?;
        let out: DecryptOut = self.call(key_id, "Decrypt", &body).await?;
        if out.key_id != arn {
            return Err(unavailable(key_id, "the ciphertext belongs to another key"));
        }
        B64.decode(out.plaintext.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| SealError::Service("KMS returned a malformed plaintext".into()))
    }

    /// GenerateDataKey (AES_256): a new key from the KMS's generator, in the clear and
    /// encrypted under `key_id` for `context`.
    pub async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), SealError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "KeyId": key_id,
            "KeySpec": "AES_256",
            "EncryptionContext": context,
        }))
        .map_err(|_| SealError::Service("encode request".into()))?;
        let out: GenerateOut = self.call(key_id, "GenerateDataKey", &body).await?;
        let plain = B64
            .decode(out.plaintext.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| SealError::Service("KMS returned a malformed plaintext".into()))?;
        let blob = B64
            .decode(out.blob)
            .map_err(|_| SealError::Service("KMS returned a malformed ciphertext".into()))?;
        if plain.len() != 32 {
            return Err(SealError::Service(
                "KMS returned a key of the wrong size".into(),
            ));
        }
        Ok((plain, blob))
    }

    /// The key's ARN if it is enabled; `KeyUnavailable` otherwise.
    pub async fn ensure_enabled(&self, key_id: &str) -> Result<String, SealError> {
        let body = serde_json::to_vec(&serde_json::json!({ "KeyId": key_id }))
            .map_err(|_| SealError::Service("encode request".into()))?;
        let out: DescribeOut = self.call(key_id, "DescribeKey", &body).await?;
        if out.meta.state != "Enabled" {
            return Err(unavailable(
                key_id,
                &format!("key state {}", out.meta.state),
            ));
        }
        Ok(out.meta.arn)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        key_id: &str,
        action: &str,
        body: &[u8],
    ) -> Result<T, SealError> {
        let target = format!("TrentService.{action}");
        let content_type = "application/x-amz-json-1.1";
        let identity: Identity = aws_credential_types::Credentials::new(
            self.credentials.access_key_id.clone(),
            self.credentials.secret_access_key.as_str().to_owned(),
            self.credentials
                .session_token
                .as_ref()
                .map(|t| t.as_str().to_owned()),
            None,
            "coffer",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("kms")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| SealError::Config(format!("SigV4 parameters: {e}")))?
            .into();
        let headers = [
            ("content-type", content_type),
            ("x-amz-target", target.as_str()),
        ];
        let signable = SignableRequest::new(
            "POST",
            self.endpoint.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| SealError::Config(format!("SigV4 request: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| SealError::Config(format!("SigV4 signing: {e}")))?
            .into_parts();
        let mut req = self
            .http
            .post(&self.endpoint)
            .header("content-type", content_type)
            .header("x-amz-target", &target)
            .body(body.to_vec());
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SealError::Unreachable(format!("KMS {action}: {}", without_url(&e))))?;
        let status = resp.status();
        let bytes = Zeroizing::new(
            resp.bytes()
                .await
                .map_err(|e| SealError::Unreachable(format!("KMS {action}: {}", without_url(&e))))?
                .to_vec(),
        );
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|_| SealError::Service(format!("KMS {action}: malformed response")));
        }
        // KMS answers in JSON; authentication failures may come as the query API's XML.
        let err: ErrorOut = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(&bytes);
            let tag = |t: &str| {
                let open = format!("<{t}>");
                text.find(&open)
                    .and_then(|i| {
                        let rest = &text[i + open.len()..];
                        rest.find(&format!("</{t}>")).map(|j| rest[..j].to_owned())
                    })
                    .unwrap_or_default()
            };
            ErrorOut {
                kind: tag("Code"),
                message: tag("Message"),
            }
        });
        let kind = err.kind.rsplit('#').next().unwrap_or_default();
        if KEY_UNAVAILABLE.contains(&kind) {
            Err(unavailable(key_id, kind))
        } else if status.is_server_error() {
            Err(SealError::Unreachable(format!(
                "KMS {action}: HTTP {status}"
            )))
        } else {
            Err(SealError::Service(format!(
                "KMS {action}: {kind} {}",
                err.message.chars().take(200).collect::<String>()
            )))
        }
    }
}

fn unavailable(key: &str, reason: &str) -> SealError {
    SealError::KeyUnavailable {
        key: format!("awskms:{key}"),
        reason: reason.to_owned(),
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    kind.to_owned()
}

impl KeyProvider for KmsClient {
    fn scheme(&self) -> &'static str {
        "awskms"
    }
    fn key(&self, name: &str) -> Result<Arc<dyn ExternalKey>, SealError> {
        Ok(Arc::new(KmsKey {
            client: self.clone(),
            key_id: name.to_owned(),
        }))
    }
}

/// One KMS key (id, ARN or alias).
#[derive(Debug, Clone)]
pub struct KmsKey {
    client: KmsClient,
    key_id: String,
}

#[async_trait::async_trait]
impl ExternalKey for KmsKey {
    fn reference(&self) -> String {
        format!("awskms:{}", self.key_id)
    }
    async fn canonical(&self) -> Result<String, SealError> {
        let arn = self.client.ensure_enabled(&self.key_id).await?;
        Ok(format!("awskms:{arn}"))
    }
    async fn wrap(
        &self,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, SealError> {
        self.client.encrypt(&self.key_id, plaintext, context).await
    }
    async fn unwrap(
        &self,
        blob: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.client.decrypt(&self.key_id, blob, context).await
    }
    async fn generate(
        &self,
        context: &EncryptionContext,
    ) -> Result<Option<(Zeroizing<Vec<u8>>, Vec<u8>)>, SealError> {
        self.client
            .generate_data_key(&self.key_id, context)
            .await
            .map(Some)
    }
}
