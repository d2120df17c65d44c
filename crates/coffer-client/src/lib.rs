//! Typed HTTPS client for Coffer's API, shared by the CLI, the agent and the tests.
//!
//! TLS is rustls (aws-lc-rs). With a CA certificate the client trusts that CA only — the way
//! to pin Coffer's internal CA; without one it uses the platform's trust store.

mod reader;
mod types;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use reader::ParamReader;
pub use types::*;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("invalid server address: {0}")]
    Address(String),
    #[error("invalid CA certificate")]
    CaCert(#[source] reqwest::Error),
    #[error("could not reach the server")]
    Http(#[source] reqwest::Error),
    #[error("unexpected response from the server (HTTP {0})")]
    Unexpected(u16),
}

impl ClientError {
    /// The API error code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected(status) => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    /// The pinned CA, for connections made outside reqwest ([`ParamReader`]).
    ca_pem: Option<std::sync::Arc<[u8]>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl Client {
    /// `addr` like `https://127.0.0.1:8200`; `ca_pem` pins the server's CA.
    /// An address without a scheme (`127.0.0.1:8200`) means HTTPS.
    pub fn new(addr: &str, ca_pem: Option<&[u8]>) -> Result<Self> {
        let addr = addr.trim();
        let full = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("https://{addr}")
        };
        let base = Url::parse(&full).map_err(|e| ClientError::Address(e.to_string()))?;
        if base.scheme() != "https" {
            return Err(ClientError::Address(
                "Coffer serves HTTPS only: the address must start with https:// (or have no scheme)"
                    .into(),
            ));
        }
        let mut b = reqwest::Client::builder()
            .http1_only()
            .https_only(true)
            .tls_version_min(reqwest::tls::Version::TLS_1_2)
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("coffer-client/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(ClientError::CaCert)?;
            b = b.tls_certs_only(certs);
        }
        Ok(Self {
            http: b.build().map_err(ClientError::Http)?,
            base,
            token: None,
            ca_pem: ca_pem.map(std::sync::Arc::from),
        })
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Build a URL from path segments; each segment is percent-encoded, so names may
    /// contain any character the server accepts.
    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty();
            p.extend(segments);
        }
        u
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<reqwest::Response> {
        let mut req = self.http.request(method, url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.map_err(ClientError::Http)
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<T> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let res = self.send(method, url, body).await?;
        decode(res).await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T> {
        self.call::<(), T>(Method::GET, segments, query, None).await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T> {
        self.call(Method::POST, segments, &[], Some(body)).await
    }

    // ---- sys ----

    /// Health as load balancers see it: the status code and the body.
    pub async fn health(&self) -> Result<(u16, Health)> {
        let res = self
            .send::<()>(Method::GET, self.url(&["v1", "sys", "health"]), None)
            .await?;
        let status = res.status().as_u16();
        let body = res
            .json()
            .await
            .map_err(|_| ClientError::Unexpected(status))?;
        Ok((status, body))
    }

    /// The Prometheus metrics text.
    pub async fn metrics(&self) -> Result<String> {
        let res = self
            .send::<()>(Method::GET, self.url(&["v1", "sys", "metrics"]), None)
            .await?;
        let status = res.status().as_u16();
        res.text()
            .await
            .map_err(|_| ClientError::Unexpected(status))
    }

    pub async fn seal_status(&self) -> Result<SealStatus> {
        self.get(&["v1", "sys", "seal-status"], &[]).await
    }

    pub async fn init(&self, shares: u8, threshold: u8) -> Result<InitResponse> {
        self.post(
            &["v1", "sys", "init"],
            &serde_json::json!({ "shares": shares, "threshold": threshold }),
        )
        .await
    }

    /// Move to the seal in the server's configuration, given a quorum of the current shares.
    pub async fn migrate_seal(&self, shares: &[String]) -> Result<SealStatus> {
        self.post(
            &["v1", "sys", "migrate-seal"],
            &serde_json::json!({ "shares": shares }),
        )
        .await
    }

    /// Replace the root key and get new shares, given a quorum of the current ones.
    pub async fn rekey(
        &self,
        current_shares: &[String],
        shares: u8,
        threshold: u8,
    ) -> Result<RekeyResponse> {
        self.post(
            &["v1", "sys", "rekey"],
            &serde_json::json!({ "current_shares": current_shares, "shares": shares, "threshold": threshold }),
        )
        .await
    }

    /// Delete the current organisation; `confirm` must be its name.
    pub async fn delete_org(&self, confirm: &str) -> Result<()> {
        self.empty(
            Method::DELETE,
            &["v1", "org"],
            &serde_json::json!({ "confirm": confirm }),
        )
        .await
    }

    pub async fn unseal(&self, share: &str) -> Result<SealStatus> {
        self.post(
            &["v1", "sys", "unseal"],
            &serde_json::json!({ "share": share }),
        )
        .await
    }

    pub async fn unseal_reset(&self) -> Result<SealStatus> {
        self.post(
            &["v1", "sys", "unseal"],
            &serde_json::json!({ "reset": true }),
        )
        .await
    }

    pub async fn seal(&self) -> Result<SealStatus> {
        self.post(&["v1", "sys", "seal"], &serde_json::json!({}))
            .await
    }

    // ---- auth ----

    pub async fn login(&self, username: &str, password: &str) -> Result<LoginResponse> {
        self.login_in(username, password, None).await
    }

    /// Log in, starting in a chosen organisation.
    pub async fn login_in(
        &self,
        username: &str,
        password: &str,
        org: Option<&str>,
    ) -> Result<LoginResponse> {
        self.post(
            &["v1", "auth", "login"],
            &serde_json::json!({ "username": username, "password": password, "org": org }),
        )
        .await
    }

    /// Second login step: a TOTP or recovery code.
    pub async fn mfa_verify(&self, mfa_token: &str, code: &str) -> Result<LoginResponse> {
        self.post(
            &["v1", "auth", "mfa", "verify"],
            &serde_json::json!({ "mfa_token": mfa_token, "code": code }),
        )
        .await
    }

    /// Log in with a JWT from a configured OpenID provider.
    pub async fn oidc_login(&self, jwt: &str, org: Option<&str>) -> Result<LoginResponse> {
        self.post(
            &["v1", "auth", "oidc"],
            &serde_json::json!({ "token": jwt, "org": org }),
        )
        .await
    }

    /// Exchange an API key for a short-lived access token.
    pub async fn exchange_api_key(&self, api_key: &str) -> Result<serde_json::Value> {
        self.post(
            &["v1", "auth", "token"],
            &serde_json::json!({ "api_key": api_key }),
        )
        .await
    }

    pub async fn change_password(&self, current: &str, new: &str) -> Result<()> {
        self.empty(
            Method::POST,
            &["v1", "auth", "password"],
            &serde_json::json!({ "current_password": current, "new_password": new }),
        )
        .await
    }

    pub async fn set_email(&self, email: Option<&str>) -> Result<()> {
        self.empty(
            Method::PUT,
            &["v1", "auth", "email"],
            &serde_json::json!({ "email": email }),
        )
        .await
    }

    pub async fn sessions(&self) -> Result<Vec<serde_json::Value>> {
        self.get(&["v1", "auth", "sessions"], &[]).await
    }

    pub async fn revoke_session(&self, id: &str) -> Result<()> {
        self.empty(Method::DELETE, &["v1", "auth", "sessions", id], &())
            .await
    }

    pub async fn mfa_enroll(&self, password: &str) -> Result<serde_json::Value> {
        self.post(
            &["v1", "auth", "mfa", "enroll"],
            &serde_json::json!({ "password": password }),
        )
        .await
    }

    pub async fn mfa_confirm(&self, code: &str) -> Result<serde_json::Value> {
        self.post(
            &["v1", "auth", "mfa", "confirm"],
            &serde_json::json!({ "code": code }),
        )
        .await
    }

    pub async fn mfa_disable(&self, password: &str, code: &str) -> Result<()> {
        self.empty(
            Method::POST,
            &["v1", "auth", "mfa", "disable"],
            &serde_json::json!({ "password": password, "code": code }),
        )
        .await
    }

    // ---- organisations ----

    pub async fn orgs(&self) -> Result<Vec<serde_json::Value>> {
        self.get(&["v1", "orgs"], &[]).await
    }

    pub async fn create_org(&self, name: &str) -> Result<serde_json::Value> {
        self.post(&["v1", "orgs"], &serde_json::json!({ "name": name }))
            .await
    }

    pub async fn switch_org(&self, org: &str) -> Result<LoginResponse> {
        self.post(
            &["v1", "auth", "switch"],
            &serde_json::json!({ "org": org }),
        )
        .await
    }

    pub async fn members(&self) -> Result<Vec<serde_json::Value>> {
        self.get(&["v1", "org", "members"], &[]).await
    }

    pub async fn set_role(&self, username: &str, role: &str) -> Result<()> {
        self.empty(
            Method::PUT,
            &["v1", "org", "members", username],
            &serde_json::json!({ "role": role }),
        )
        .await
    }

    pub async fn remove_member(&self, username: &str) -> Result<()> {
        self.empty(Method::DELETE, &["v1", "org", "members", username], &())
            .await
    }

    pub async fn invite(&self, email: &str, role: &str) -> Result<serde_json::Value> {
        self.post(
            &["v1", "org", "invitations"],
            &serde_json::json!({ "email": email, "role": role }),
        )
        .await
    }

    pub async fn invitations(&self) -> Result<Vec<serde_json::Value>> {
        self.get(&["v1", "org", "invitations"], &[]).await
    }

    pub async fn accept_invitation(
        &self,
        token: &str,
        username: Option<&str>,
        password: &str,
    ) -> Result<serde_json::Value> {
        let mut body = serde_json::json!({ "token": token, "password": password });
        if let Some(u) = username {
            body["username"] = u.into();
        }
        self.post(&["v1", "invitations", "accept"], &body).await
    }

    pub async fn org_settings(&self) -> Result<serde_json::Value> {
        self.get(&["v1", "org", "settings"], &[]).await
    }

    /// The organisation's key terms and rotation progress.
    pub async fn key_status(&self) -> Result<KeyStatus> {
        self.get(&["v1", "org", "keys"], &[]).await
    }

    /// Start a rotation of the organisation's key.
    pub async fn rotate_key(&self) -> Result<KeyStatus> {
        self.post(&["v1", "org", "keys", "rotate"], &serde_json::json!({}))
            .await
    }

    /// Attach the organisation's own key (`awskms:…` or `pkcs11:…`); a rotation starts.
    pub async fn attach_external_key(&self, key: &str) -> Result<KeyStatus> {
        self.call(
            Method::PUT,
            &["v1", "org", "keys", "external"],
            &[],
            Some(&serde_json::json!({ "key": key })),
        )
        .await
    }

    /// Go back to the root key; a rotation starts.
    pub async fn detach_external_key(&self) -> Result<KeyStatus> {
        self.call::<(), _>(
            Method::DELETE,
            &["v1", "org", "keys", "external"],
            &[],
            None,
        )
        .await
    }

    pub async fn set_require_mfa(&self, on: bool) -> Result<()> {
        self.empty(
            Method::PUT,
            &["v1", "org", "settings"],
            &serde_json::json!({ "require_mfa": on }),
        )
        .await
    }

    // ---- API keys ----

    pub async fn create_api_key(&self, req: &serde_json::Value) -> Result<serde_json::Value> {
        self.post(&["v1", "org", "api-keys"], req).await
    }

    pub async fn api_keys(&self) -> Result<Vec<serde_json::Value>> {
        self.get(&["v1", "org", "api-keys"], &[]).await
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<()> {
        self.empty(Method::DELETE, &["v1", "org", "api-keys", id], &())
            .await
    }

    /// A request whose success has no body (204).
    async fn empty<B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        body: &B,
    ) -> Result<()> {
        let res = self.send(method, self.url(segments), Some(body)).await?;
        expect_empty(res).await
    }

    pub async fn logout(&self) -> Result<()> {
        let res = self
            .send::<()>(Method::POST, self.url(&["v1", "auth", "logout"]), None)
            .await?;
        expect_empty(res).await
    }

    pub async fn whoami(&self) -> Result<Whoami> {
        self.get(&["v1", "auth", "whoami"], &[]).await
    }

    // ---- projects ----

    pub async fn projects(&self) -> Result<Vec<Project>> {
        self.get(&["v1", "projects"], &[]).await
    }

    pub async fn create_project(&self, name: &str) -> Result<Project> {
        self.post(&["v1", "projects"], &serde_json::json!({ "name": name }))
            .await
    }

    pub async fn envs(&self, project: &str) -> Result<Vec<Env>> {
        self.get(&["v1", "projects", project, "envs"], &[]).await
    }

    pub async fn create_env(&self, project: &str, name: &str, parent: Option<&str>) -> Result<Env> {
        self.post(
            &["v1", "projects", project, "envs"],
            &serde_json::json!({ "name": name, "parent": parent }),
        )
        .await
    }

    // ---- parameters ----

    pub async fn list_params(&self, project: &str, env: &str, reveal: bool) -> Result<Vec<Param>> {
        let r: ParamList = self
            .get(
                &["v1", "projects", project, "envs", env, "params"],
                &[("reveal", if reveal { "true" } else { "false" })],
            )
            .await?;
        Ok(r.params)
    }

    pub async fn get_param(&self, project: &str, env: &str, name: &str) -> Result<Param> {
        self.get(
            &["v1", "projects", project, "envs", env, "params", name],
            &[],
        )
        .await
    }

    /// A connection of its own that reads one parameter, for load generation. Needs the
    /// token and the pinned CA.
    /// The URL path of a parameter, for [`ParamReader::get_at`].
    pub fn param_path(&self, project: &str, env: &str, name: &str) -> String {
        self.url(&["v1", "projects", project, "envs", env, "params", name])
            .path()
            .to_owned()
    }

    pub async fn param_reader(&self, project: &str, env: &str, name: &str) -> Result<ParamReader> {
        let (Some(token), Some(ca)) = (&self.token, &self.ca_pem) else {
            return Err(ClientError::Address(
                "a reader needs a login and the server's CA certificate".into(),
            ));
        };
        let url = self.url(&["v1", "projects", project, "envs", env, "params", name]);
        ParamReader::connect(&self.base, ca, url.path(), token).await
    }

    pub async fn set_param(
        &self,
        project: &str,
        env: &str,
        name: &str,
        value: &str,
        secret: Option<bool>,
    ) -> Result<WriteResult> {
        let body = serde_json::json!({ "value": value, "secret": secret });
        self.call(
            Method::PUT,
            &["v1", "projects", project, "envs", env, "params", name],
            &[],
            Some(&body),
        )
        .await
    }

    pub async fn delete_param(&self, project: &str, env: &str, name: &str) -> Result<WriteResult> {
        self.call::<(), _>(
            Method::DELETE,
            &["v1", "projects", project, "envs", env, "params", name],
            &[],
            None,
        )
        .await
    }

    pub async fn history(&self, project: &str, env: &str, name: &str) -> Result<Vec<HistoryEntry>> {
        let r: History = self
            .get(
                &[
                    "v1", "projects", project, "envs", env, "params", name, "history",
                ],
                &[],
            )
            .await?;
        Ok(r.versions)
    }

    pub async fn rollback(
        &self,
        project: &str,
        env: &str,
        name: &str,
        version: u64,
    ) -> Result<WriteResult> {
        self.post(
            &[
                "v1", "projects", project, "envs", env, "params", name, "rollback",
            ],
            &serde_json::json!({ "version": version }),
        )
        .await
    }

    pub async fn diff(&self, project: &str, a: &str, b: &str, reveal: bool) -> Result<Diff> {
        self.get(
            &["v1", "projects", project, "diff"],
            &[
                ("a", a),
                ("b", b),
                ("reveal", if reveal { "true" } else { "false" }),
            ],
        )
        .await
    }

    // ---- audit ----

    /// One page of audit events; `query` pairs as in `GET /v1/audit/events`.
    pub async fn audit_events(&self, query: &[(&str, &str)]) -> Result<AuditPage> {
        self.get(&["v1", "audit", "events"], query).await
    }

    pub async fn audit_log(
        &self,
        action: &str,
        detail: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        self.post(
            &["v1", "audit", "events"],
            &serde_json::json!({ "action": action, "detail": detail }),
        )
        .await
    }

    pub async fn audit_verify(&self) -> Result<serde_json::Value> {
        self.get(&["v1", "audit", "verify"], &[]).await
    }

    pub async fn audit_checkpoint(&self) -> Result<serde_json::Value> {
        self.post(&["v1", "audit", "checkpoints"], &serde_json::json!({}))
            .await
    }

    /// The export as a byte stream, to be copied to a file as it arrives.
    pub async fn audit_export(&self, query: &[(&str, &str)]) -> Result<reqwest::Response> {
        let mut url = self.url(&["v1", "audit", "export"]);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let res = self.send::<()>(Method::GET, url, None).await?;
        if res.status().is_success() {
            Ok(res)
        } else {
            Err(error_from(res).await)
        }
    }

    /// The server's OpenAPI document.
    pub async fn openapi(&self) -> Result<serde_json::Value> {
        self.get(&["v1", "openapi.json"], &[]).await
    }
}

async fn error_from(res: reqwest::Response) -> ClientError {
    let status = res.status().as_u16();
    match res.json::<ErrorBody>().await {
        Ok(b) => ClientError::Api {
            status,
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => ClientError::Unexpected(status),
    }
}

async fn decode<T: DeserializeOwned>(res: reqwest::Response) -> Result<T> {
    if !res.status().is_success() {
        return Err(error_from(res).await);
    }
    let status = res.status().as_u16();
    res.json()
        .await
        .map_err(|_| ClientError::Unexpected(status))
}

async fn expect_empty(res: reqwest::Response) -> Result<()> {
    if res.status() == StatusCode::NO_CONTENT || res.status().is_success() {
        Ok(())
    } else {
        Err(error_from(res).await)
    }
}
