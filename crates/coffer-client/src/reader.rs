//! A lean reader of one parameter over one HTTP/1.1 keep-alive connection, for load
//! generation (`coffer bench`). The request is built once, and nothing sits between the
//! caller and the connection (no pool, redirects, retries or URL parsing per request), so a
//! benchmark that shares its machine with the server leaves the server the CPU.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::{ClientError, Param, Result};

#[derive(Debug)]
pub struct ParamReader {
    send: SendRequest<Empty<Bytes>>,
    head: http::request::Parts,
}

impl ParamReader {
    /// Connect to `base` (an `https://host:port` URL), trusting only the CA in `ca_pem`.
    pub(crate) async fn connect(
        base: &reqwest::Url,
        ca_pem: &[u8],
        path: &str,
        token: &str,
    ) -> Result<Self> {
        let host = base
            .host_str()
            .ok_or_else(|| ClientError::Address("no host".into()))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let port = base.port_or_known_default().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ClientError::Address(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Address(format!("CA certificate: {e}")))?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Address(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.clone())
            .map_err(|e| ClientError::Address(format!("server name: {e}")))?;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| ClientError::Address(format!("connect: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| ClientError::Address(format!("connect: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Address(format!("TLS: {e}")))?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Address(format!("HTTP: {e}")))?;
        tokio::spawn(conn);
        let authority = match base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let (head, ()) = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(
                http::header::USER_AGENT,
                concat!("coffer-client/", env!("CARGO_PKG_VERSION")),
            )
            .body(())
            .map_err(|e| ClientError::Address(format!("request: {e}")))?
            .into_parts();
        Ok(Self { send, head })
    }

    /// Read the parameter once.
    pub async fn get(&mut self) -> Result<Param> {
        self.send_head(self.head.clone()).await
    }

    /// Read another parameter over the same connection, as another caller: `path` as the
    /// parameter's URL path (`/v1/projects/…/params/NAME`) and `token` its bearer token (the
    /// scale benchmark reads across many organisations, each with its own key).
    pub async fn get_at(&mut self, path: &str, token: &str) -> Result<Param> {
        let mut head = self.head.clone();
        head.uri = path
            .parse()
            .map_err(|_| ClientError::Address("request path".into()))?;
        head.headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Address("token".into()))?,
        );
        self.send_head(head).await
    }

    async fn send_head(&mut self, head: http::request::Parts) -> Result<Param> {
        self.send
            .ready()
            .await
            .map_err(|_| ClientError::Unexpected(0))?;
        let res = self
            .send
            .send_request(http::Request::from_parts(head, Empty::new()))
            .await
            .map_err(|_| ClientError::Unexpected(0))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|_| ClientError::Unexpected(status))?
            .to_bytes();
        if status != 200 {
            return Err(ClientError::Unexpected(status));
        }
        serde_json::from_slice(&body).map_err(|_| ClientError::Unexpected(status))
    }
}
