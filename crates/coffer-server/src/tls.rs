//! TLS: an internal CA and server certificate generated on first start, or files supplied
//! by the operator. TLS 1.2 and 1.3 only, through rustls with the aws-lc-rs provider.
//!
//! The internal CA's private key is used once, to sign the server certificate, and never
//! written anywhere: nobody can mint further certificates that chain to it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where the server's certificate and key are, and the CA to give clients.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The internal CA certificate, when Coffer generated its own.
    pub ca: Option<PathBuf>,
}

/// Generate the internal CA and a server certificate for localhost/127.0.0.1/::1 in `dir`,
/// unless they exist already.
pub fn ensure_internal_ca(dir: &Path, extra_names: &[String]) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        ca: Some(dir.join("ca.pem")),
    };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let ca_key = KeyPair::generate().context("generate CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Coffer internal CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("self-sign CA")?;

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra_names.iter().cloned());
    let key = KeyPair::generate().context("generate server key")?;
    let mut params = CertificateParams::new(names).context("server certificate parameters")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "coffer server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &ca)
        .context("sign server certificate")?;

    let ca_pem = ca.pem();
    write_file(
        files.ca.as_deref().unwrap_or(&files.cert),
        ca_pem.as_bytes(),
        0o644,
    )?;
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(
        &files.cert,
        format!("{}{}", cert.pem(), ca_pem).as_bytes(),
        0o644,
    )?;
    Ok(files)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("write {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("sync {}", path.display()))
}

/// SHA-256 fingerprint of the first certificate in a PEM file.
pub fn fingerprint(pem_path: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(pem_path).with_context(|| format!("read {}", pem_path.display()))?;
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .context("no certificate in file")?
        .context("parse certificate")?;
    Ok(coffer_core::fingerprint_sha256(&der))
}

/// A rustls server configuration: TLS 1.3 and 1.2, aws-lc-rs, HTTP/1.1.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let cert_pem =
        std::fs::read(&files.cert).with_context(|| format!("read {}", files.cert.display()))?;
    let key_pem =
        std::fs::read(&files.key).with_context(|| format!("read {}", files.key.display()))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("parse certificate chain")?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_slice(&key_pem).context("parse private key")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
