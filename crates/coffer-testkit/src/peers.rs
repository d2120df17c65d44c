//! Real protocol peers the suites talk to, started on 127.0.0.1 only: an SMTP receiver
//! (Python's aiosmtpd) and an OpenID provider (`oidc-provider` from npm, under
//! tests/oidc-provider). `scripts/test.sh` installs both; a missing one fails the test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

fn wait_listening(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not start on 127.0.0.1:{port} (run `bash scripts/test.sh`, which installs it)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An SMTP server that stores what it receives in a maildir.
#[derive(Debug)]
pub struct SmtpReceiver {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl SmtpReceiver {
    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("maildir"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start aiosmtpd (python3 -m pip install aiosmtpd): {e}"));
        wait_listening(port, "aiosmtpd");
        Self { child, dir, port }
    }

    /// Every message received so far, raw (headers and body).
    pub fn messages(&self) -> Vec<String> {
        let new = self.dir.path().join("maildir").join("new");
        let mut out: Vec<String> = std::fs::read_dir(new)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Wait until a message contains `needle`; returns it.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| m.contains(needle)) {
                return m;
            }
            assert!(
                start.elapsed() < timeout,
                "no mail containing {needle:?} within {timeout:?}; got {:?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SmtpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `oidc-provider` (see tests/oidc-provider/README.md).
#[derive(Debug)]
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
}

impl OidcProvider {
    /// Start the provider and wait for its `READY` line. Once (seen in CI, never reproduced)
    /// node hung before listening, with no output: a start that says nothing within
    /// `READY_WITHIN` is killed and tried again, once.
    pub fn start() -> Self {
        const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);
        let mut last = String::new();
        for _ in 0..2 {
            match Self::try_start(READY_WITHIN) {
                Ok(p) => return p,
                Err(why) => last = why,
            }
        }
        panic!("oidc-provider did not start (run `bash scripts/test.sh`): {last}")
    }

    fn try_start(ready_within: std::time::Duration) -> Result<Self, String> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc-provider");
        let port = free_port();
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg(port.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start oidc-provider with node: {e}"));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("oidc-provider stdout"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let line = match rx.recv_timeout(ready_within) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => format!("(unreadable: {e})"),
            Err(_) => format!("(nothing within {ready_within:?})"),
        };
        match line.trim().strip_prefix("READY ") {
            Some(issuer) => Ok(Self {
                child,
                issuer: issuer.to_owned(),
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{line:?}"))
            }
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// A client-credentials access token (a JWT) for `resource` as its audience.
    pub async fn token(&self, client_id: &str, secret: &str, resource: &str) -> String {
        let http = reqwest::Client::new();
        let r: serde_json::Value = http
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("resource", resource),
            ])
            .send()
            .await
            .unwrap_or_else(|e| panic!("token request: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("token response: {e}"));
        r["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {r}"))
            .to_owned()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` (PyPI `moto[server]`): AWS KMS on 127.0.0.1, for the KMS seal and
/// organisations' own KMS keys.
#[derive(Debug)]
pub struct MotoKms {
    child: Child,
    pub port: u16,
}

impl MotoKms {
    pub fn start() -> Self {
        Self::start_checking_signatures_after(None)
    }

    /// With `Some(n)`, moto answers the first `n` actions without authentication and then
    /// checks every request's SigV4 signature (with botocore's signer) against the IAM
    /// users and policies created by those first actions.
    pub fn start_checking_signatures_after(n: Option<u32>) -> Self {
        let port = free_port();
        let mut cmd = Command::new("moto_server");
        if let Some(n) = n {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd
            .args(["-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start moto_server (python3 -m pip install 'moto[server]'): {e}")
            });
        wait_listening(port, "moto_server");
        Self { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// A KMS client for this server (moto accepts any credentials).
    pub fn client(&self) -> coffer_extkeys::KmsClient {
        coffer_extkeys::KmsClient::new(coffer_extkeys::KmsConfig {
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint()),
            credentials: coffer_extkeys::AwsCredentials::new(
                "AKIDTEST".into(),
                "test-secret".into(),
                None,
            ),
        })
        .unwrap_or_else(|e| panic!("KMS client: {e}"))
    }

    /// Key services with this KMS only.
    pub fn services(&self) -> coffer_core::seal::KeyServices {
        coffer_core::seal::KeyServices::new(vec![std::sync::Arc::new(self.client())])
    }

    /// Call a KMS action directly (unsigned; moto does not check signatures), as the key's
    /// owner would in their own account.
    pub async fn call(&self, action: &str, body: serde_json::Value) -> serde_json::Value {
        let resp = reqwest::Client::new()
            .post(self.endpoint())
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("TrentService.{action}"))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("moto {action}: {e}"));
        assert!(
            resp.status().is_success(),
            "moto {action}: {}",
            resp.status()
        );
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("moto {action}: {e}"))
    }

    /// An IAM query-API action (form-encoded, unsigned): only useful while moto still
    /// admits unauthenticated actions. Returns the XML response.
    pub async fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut form = vec![("Version", "2010-05-08")];
        form.extend_from_slice(params);
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let resp = reqwest::Client::new()
            .post(self.endpoint())
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("moto IAM: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "moto IAM {params:?}: {status} {text}");
        text
    }

    /// A new symmetric key; returns its id.
    pub async fn create_key(&self) -> String {
        let v = self.call("CreateKey", serde_json::json!({})).await;
        v["KeyMetadata"]["KeyId"]
            .as_str()
            .unwrap_or_else(|| panic!("no key id in {v}"))
            .to_owned()
    }

    pub async fn set_enabled(&self, key_id: &str, enabled: bool) {
        let action = if enabled { "EnableKey" } else { "DisableKey" };
        self.call(action, serde_json::json!({ "KeyId": key_id }))
            .await;
    }
}

fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for MotoKms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Debian SoftHSM2 module.
pub const SOFTHSM_LIBRARY: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 token, created with `softhsm2-util` under the configuration in
/// `SOFTHSM2_CONF` (scripts/test.sh points it at target/softhsm) or Debian's default. The
/// module lists tokens when a process first loads it, so each test process makes one token
/// ([`SoftHsm::shared`]) before that, and tests use their own key labels on it.
#[derive(Debug)]
pub struct SoftHsm {
    pub token_label: String,
    pub pin: String,
}

impl SoftHsm {
    pub fn shared() -> &'static SoftHsm {
        static HSM: std::sync::OnceLock<SoftHsm> = std::sync::OnceLock::new();
        HSM.get_or_init(|| {
            let token_label = format!(
                "coffer-test-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            let pin = "4321-test-pin".to_owned();
            let out = Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", &token_label])
                .args(["--so-pin", "1234-so-pin", "--pin", &pin])
                .output()
                .unwrap_or_else(|e| panic!("softhsm2-util (apt-get install softhsm2): {e}"));
            assert!(
                out.status.success(),
                "softhsm2-util: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            SoftHsm { token_label, pin }
        })
    }

    /// A logged-in session on the shared token.
    pub fn open() -> std::sync::Arc<coffer_extkeys::Hsm> {
        let t = Self::shared();
        coffer_extkeys::Hsm::open(&coffer_extkeys::Pkcs11Config {
            library: SOFTHSM_LIBRARY.into(),
            token_label: t.token_label.clone(),
            pin: zeroize::Zeroizing::new(t.pin.clone()),
        })
        .unwrap_or_else(|e| panic!("open the SoftHSM token: {e}"))
    }
}
