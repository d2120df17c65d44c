//! Committed test vectors for Coffer's frozen formats: `tests/vectors/*.json` at the
//! repository root (docs/crypto.md, "Test vectors").
//!
//! Normally every test here only reads its file and checks the library against it: stored
//! bytes written by an earlier build must still open (or hash, or verify) to exactly what the
//! file says, and every negative case must still fail. Each positive case is also decoded a
//! second time with AWS-LC directly, following the layout the file documents, so the file is
//! a description of the format and not only of this crate's behaviour.
//!
//! `COFFER_WRITE_VECTORS=1 cargo test -p coffer-crypto --test vectors` writes the files afresh
//! (with real random nonces and keys where the format has them) and then checks them the same
//! way. Regenerating committed vectors is a format change: it needs a new format version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use aws_lc_rs::aead::{
    AES_256_GCM, AES_256_GCM_SIV, Aad, Algorithm, LessSafeKey, Nonce, UnboundKey,
};
use coffer_crypto::audit::{self, AuditHmacKey, AuditSigningKey, GENESIS};
use coffer_crypto::shamir::{self, Share};
use coffer_crypto::system::{Purpose, SystemKey};
use coffer_crypto::{
    Ciphertext, CryptoError, KeyTerm, RecordContext, RootKey, RootKeyCheck, TenantKey, ValueScheme,
    WrappedTenantKey,
};
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Files and fields

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

fn writing() -> bool {
    std::env::var_os("COFFER_WRITE_VECTORS").is_some_and(|v| v == "1")
}

/// The committed file `name`; with `COFFER_WRITE_VECTORS=1`, `build` writes it first. Either
/// way the checks run on what the file holds.
fn load(name: &str, build: impl FnOnce() -> Value) -> Value {
    let path = vectors_dir().join(name);
    if writing() {
        std::fs::create_dir_all(vectors_dir()).unwrap();
        let mut text = serde_json::to_string_pretty(&build()).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the vectors are committed; COFFER_WRITE_VECTORS=1 writes new ones, \
             which is a format change)",
            path.display()
        )
    });
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["description"].as_str().is_some_and(|d| !d.is_empty()),
        "{name} needs a description"
    );
    v
}

fn list<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    let items = v[k]
        .as_array()
        .unwrap_or_else(|| panic!("missing array {k}"));
    assert!(!items.is_empty(), "empty array {k}");
    items
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("missing string {k} in {v}"))
}

fn bytes(v: &Value, k: &str) -> Vec<u8> {
    hex::decode(text(v, k)).unwrap_or_else(|e| panic!("{k}: {e}"))
}

fn array32(v: &Value, k: &str) -> [u8; 32] {
    bytes(v, k).try_into().unwrap()
}

fn num(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("missing number {k} in {v}"))
}

fn int(v: &Value, k: &str) -> i64 {
    v[k].as_i64()
        .unwrap_or_else(|| panic!("missing number {k} in {v}"))
}

fn uuid(v: &Value, k: &str) -> Uuid {
    Uuid::parse_str(text(v, k)).unwrap()
}

fn name(v: &Value) -> &str {
    text(v, "name")
}

fn flip(mut b: Vec<u8>, at: usize) -> Vec<u8> {
    b[at] ^= 0x01;
    b
}

// ---------------------------------------------------------------------------------------------
// Independent primitives (AWS-LC directly), to decode the documented layouts

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// `nonce(12) | ciphertext | tag(16)` opened with `alg`.
fn aead_open(alg: &'static Algorithm, key: &[u8], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let (nonce, body) = sealed.split_at_checked(NONCE_LEN)?;
    let key = LessSafeKey::new(UnboundKey::new(alg, key).ok()?);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = body.to_vec();
    let pt = key.open_in_place(nonce, Aad::from(aad), &mut buf).ok()?;
    Some(pt.to_vec())
}

/// AES-256-GCM `nonce(12) | ciphertext | tag(16)` with a random nonce.
fn gcm_seal(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    coffer_crypto::random_bytes(&mut nonce);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .unwrap();
    [nonce.as_slice(), &body].concat()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .try_into()
        .unwrap()
}

fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
    let mut out = [0u8; 32];
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], HKDF_SHA256)
        .unwrap()
        .fill(&mut out)
        .unwrap();
    out
}

/// Fixed 32-byte keys for the vectors: not secret, only distinct.
fn test_key(label: &str) -> [u8; 32] {
    sha256(format!("coffer test vector key: {label}").as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Envelope (envelope.rs, TenantKey::seal/open)

const ENVELOPE_DESCRIPTION: &str = "Frozen: the stored ciphertext of one value version \
(envelope.rs, TenantKey::seal/open). Layout: header(8) = \"CF\" | format u8 (1) | scheme u8 \
(1 AES-256-GCM, 2 AES-256-GCM-SIV) | key term u32 BE; then the wrapped data key = nonce(12) | \
AEAD(tenant key, data key 32) | tag(16) with AAD \"coffer/dek/v1\" | org id(16) | record \
id(16) | version u64 BE | header(8); then the value = nonce(12) | AEAD(data key, value) | \
tag(16) with AAD \"coffer/data/v1\" | org id | record id | version u64 BE | header[0..4]. \
Each vector: tenant key + term + context + ciphertext -> plaintext. Each negative must fail \
to open (CryptoError::Decrypt).";

fn scheme_id(s: ValueScheme) -> u8 {
    match s {
        ValueScheme::Aes256GcmSiv => 2,
        _ => 1,
    }
}

fn scheme_alg(s: ValueScheme) -> &'static Algorithm {
    match s {
        ValueScheme::Aes256GcmSiv => &AES_256_GCM_SIV,
        _ => &AES_256_GCM,
    }
}

fn envelope_case(
    name: &str,
    key: &[u8; 32],
    term: u32,
    ctx: &RecordContext,
    scheme: Option<ValueScheme>,
    ciphertext: &[u8],
    plaintext: Option<&[u8]>,
) -> Value {
    let mut v = json!({
        "name": name,
        "tenant_key": hex::encode(key),
        "term": term,
        "org_id": ctx.org_id.to_string(),
        "record_id": ctx.record_id.to_string(),
        "version": ctx.version,
        "ciphertext": hex::encode(ciphertext),
    });
    if let Some(s) = scheme {
        v["scheme"] = json!(s.as_str());
    }
    if let Some(p) = plaintext {
        v["plaintext"] = json!(hex::encode(p));
    }
    v
}

fn build_envelope() -> Value {
    let key = test_key("tenant");
    let other_key = test_key("another tenant");
    let base = RecordContext {
        org_id: Uuid::parse_str("0190f3a1-7c2e-7b4d-9a55-3e2f1c0d9b8a").unwrap(),
        record_id: Uuid::parse_str("0190f3a1-8d11-7e02-b3c4-5d6e7f809102").unwrap(),
        version: 1,
    };
    let long: Vec<u8> = (0u8..=255).collect();
    let cases: [(&str, ValueScheme, u32, u64, &[u8]); 5] = [
        (
            "gcm ascii",
            ValueScheme::Aes256Gcm,
            1,
            1,
            b"s3cr3t-p4ssw0rd",
        ),
        ("gcm empty value", ValueScheme::Aes256Gcm, 1, 2, b""),
        (
            "gcm 256 bytes, term 7, large version",
            ValueScheme::Aes256Gcm,
            7,
            1 << 40,
            &long,
        ),
        (
            "gcm-siv utf-8",
            ValueScheme::Aes256GcmSiv,
            1,
            3,
            "pässwörd 🔑".as_bytes(),
        ),
        (
            "gcm-siv term 4294967295",
            ValueScheme::Aes256GcmSiv,
            u32::MAX,
            9,
            b"max term",
        ),
    ];
    let mut vectors = Vec::new();
    let mut sealed = Vec::new();
    for (name, scheme, term, version, pt) in cases {
        let ctx = RecordContext { version, ..base };
        let k = TenantKey::from_external(KeyTerm(term), &key).unwrap();
        let ct = k.seal_with(scheme, &ctx, pt).unwrap().into_bytes();
        vectors.push(envelope_case(
            name,
            &key,
            term,
            &ctx,
            Some(scheme),
            &ct,
            Some(pt),
        ));
        sealed.push((ctx, term, ct));
    }
    let (ctx, term, ct) = sealed[0].clone();
    let (siv_ctx, siv_term, siv) = sealed[3].clone();
    let tag_end = 8 + NONCE_LEN + 32 + TAG_LEN;
    let n = |name: &str, key: &[u8; 32], term: u32, ctx: &RecordContext, ct: &[u8]| {
        envelope_case(name, key, term, ctx, None, ct, None)
    };
    let negative = vec![
        n(
            "wrong organisation",
            &key,
            term,
            &RecordContext {
                org_id: Uuid::from_u128(1),
                ..ctx
            },
            &ct,
        ),
        n(
            "wrong record",
            &key,
            term,
            &RecordContext {
                record_id: Uuid::from_u128(2),
                ..ctx
            },
            &ct,
        ),
        n(
            "wrong version",
            &key,
            term,
            &RecordContext { version: 2, ..ctx },
            &ct,
        ),
        n("wrong tenant key", &other_key, term, &ctx, &ct),
        n(
            "flipped byte in the wrapped data key",
            &key,
            term,
            &ctx,
            &flip(ct.clone(), 8 + NONCE_LEN + 3),
        ),
        n(
            "flipped tag of the wrapped data key",
            &key,
            term,
            &ctx,
            &flip(ct.clone(), tag_end - 1),
        ),
        n(
            "flipped nonce of the value",
            &key,
            term,
            &ctx,
            &flip(ct.clone(), tag_end),
        ),
        n(
            "flipped last byte (value tag)",
            &key,
            term,
            &ctx,
            &flip(ct.clone(), ct.len() - 1),
        ),
        n(
            "term relabelled in the header, key of that term",
            &key,
            term ^ 1,
            &ctx,
            &flip(ct.clone(), 7),
        ),
        n("scheme relabelled gcm -> gcm-siv", &key, term, &ctx, &{
            let mut b = ct.clone();
            b[3] = 2;
            b
        }),
        n(
            "scheme relabelled gcm-siv -> gcm",
            &key,
            siv_term,
            &siv_ctx,
            &{
                let mut b = siv.clone();
                b[3] = 1;
                b
            },
        ),
        n("unknown scheme 3", &key, term, &ctx, &{
            let mut b = ct.clone();
            b[3] = 3;
            b
        }),
        n("unknown format version 2", &key, term, &ctx, &{
            let mut b = ct.clone();
            b[2] = 2;
            b
        }),
        n("bad magic", &key, term, &ctx, &flip(ct.clone(), 0)),
        n(
            "truncated by one byte",
            &key,
            term,
            &ctx,
            &ct[..ct.len() - 1],
        ),
        n(
            "one byte appended",
            &key,
            term,
            &ctx,
            &[ct.as_slice(), &[0]].concat(),
        ),
        n("header only", &key, term, &ctx, &ct[..8]),
    ];
    json!({
        "description": ENVELOPE_DESCRIPTION,
        "vectors": vectors,
        "negative": negative,
    })
}

fn tenant_key_of(v: &Value) -> TenantKey {
    TenantKey::from_external(
        KeyTerm(num(v, "term").try_into().unwrap()),
        &bytes(v, "tenant_key"),
    )
    .unwrap()
}

fn context_of(v: &Value) -> RecordContext {
    RecordContext {
        org_id: uuid(v, "org_id"),
        record_id: uuid(v, "record_id"),
        version: num(v, "version"),
    }
}

fn record_aad(label: &[u8], ctx: &RecordContext, extra: &[u8]) -> Vec<u8> {
    [
        label,
        ctx.org_id.as_bytes(),
        ctx.record_id.as_bytes(),
        &ctx.version.to_be_bytes(),
        extra,
    ]
    .concat()
}

#[test]
fn envelope_vectors_open_and_tampering_fails() {
    let file = load("envelope.json", build_envelope);
    for v in list(&file, "vectors") {
        let name = name(v);
        let key = tenant_key_of(v);
        let ctx = context_of(v);
        let scheme = ValueScheme::parse(text(v, "scheme")).unwrap();
        let stored = bytes(v, "ciphertext");
        let plaintext = bytes(v, "plaintext");

        let ct = Ciphertext::from_stored_bytes(stored.clone()).unwrap();
        assert_eq!(ct.scheme(), scheme, "{name}");
        assert_eq!(ct.key_term(), key.term(), "{name}");
        assert_eq!(
            key.open(&ctx, &ct).unwrap().expose_secret(),
            plaintext,
            "{name}"
        );

        // The documented layout, decoded independently.
        let mut header = b"CF".to_vec();
        header.extend_from_slice(&[1, scheme_id(scheme)]);
        header.extend_from_slice(&key.term().0.to_be_bytes());
        assert_eq!(stored.len(), 8 + 60 + 28 + plaintext.len(), "{name}");
        assert_eq!(&stored[..8], header.as_slice(), "{name}");
        let alg = scheme_alg(scheme);
        let dek = aead_open(
            alg,
            key.expose_secret(),
            &record_aad(b"coffer/dek/v1", &ctx, &header),
            &stored[8..68],
        )
        .unwrap_or_else(|| panic!("{name}: data key layer"));
        let value = aead_open(
            alg,
            &dek,
            &record_aad(b"coffer/data/v1", &ctx, &header[..4]),
            &stored[68..],
        )
        .unwrap_or_else(|| panic!("{name}: value layer"));
        assert_eq!(value, plaintext, "{name}");

        // Values written today still take this form (a new form needs a new format version
        // and vectors of its own).
        let fresh = key
            .seal_with(scheme, &ctx, &plaintext)
            .unwrap()
            .into_bytes();
        assert_eq!(fresh.len(), stored.len(), "{name}");
        assert_eq!(&fresh[..8], header.as_slice(), "{name}");
        assert_ne!(fresh, stored, "{name}: nonces and data keys are random");
    }
    for v in list(&file, "negative") {
        let res = Ciphertext::from_stored_bytes(bytes(v, "ciphertext"))
            .and_then(|ct| tenant_key_of(v).open(&context_of(v), &ct));
        assert_eq!(res.err(), Some(CryptoError::Decrypt), "{}", name(v));
    }
}

// ---------------------------------------------------------------------------------------------
// Key wrapping (RootKey::wrap_tenant_key/unwrap_tenant_key, check_value, external wraps)

const KEY_WRAP_DESCRIPTION: &str = "Frozen: tenant keys wrapped by the root key, the root key \
check value and externally wrapped tenant keys (keys.rs). Root-wrapped: header(8) = \"CK\" | \
format u8 (1) | alg u8 (1 = AES-256-GCM under the root key) | term u32 BE, then nonce(12) | \
AES-256-GCM(root key, tenant key 32) | tag(16) with AAD \"coffer/kek/v1\" | org id(16) | \
header(8). Check value: nonce(12) | AES-256-GCM(root key, \"coffer root key check v1\") | \
tag(16) with AAD \"coffer/root-check/v1\". External: header with alg 2 | reference length u16 \
BE | reference (UTF-8) | the external service's blob. Negatives must fail to unwrap \
(CryptoError::Decrypt) or, for the check value, not match.";

fn build_key_wrap() -> Value {
    let root_key = test_key("root");
    let root = RootKey::from_bytes(&root_key).unwrap();
    let org = Uuid::parse_str("0190f3a1-7c2e-7b4d-9a55-3e2f1c0d9b8a").unwrap();
    let cases = [
        ("term 1", org, 1u32, test_key("tenant")),
        ("term 7", org, 7, test_key("tenant term 7")),
        (
            "nil organisation, term 4294967295",
            Uuid::nil(),
            u32::MAX,
            test_key("system"),
        ),
    ];
    let vectors: Vec<Value> = cases
        .iter()
        .map(|(name, org, term, tk)| {
            let w = root
                .wrap_tenant_key(*org, &TenantKey::from_external(KeyTerm(*term), tk).unwrap())
                .unwrap();
            json!({
                "name": name,
                "root_key": hex::encode(root_key),
                "org_id": org.to_string(),
                "term": term,
                "tenant_key": hex::encode(tk),
                "wrapped": hex::encode(w.as_bytes()),
            })
        })
        .collect();
    let w = bytes(&vectors[0], "wrapped");
    let n = |name: &str, root: &[u8], org: Uuid, wrapped: &[u8]| {
        json!({
            "name": name,
            "root_key": hex::encode(root),
            "org_id": org.to_string(),
            "wrapped": hex::encode(wrapped),
        })
    };
    let other_root = test_key("another root");
    let negative = vec![
        n("wrong organisation", &root_key, Uuid::from_u128(1), &w),
        n("wrong root key", &other_root, org, &w),
        n(
            "term relabelled in the header",
            &root_key,
            org,
            &flip(w.clone(), 7),
        ),
        n("alg relabelled as external", &root_key, org, &{
            let mut b = w.clone();
            b[3] = 2;
            b
        }),
        n("unknown format 2", &root_key, org, &{
            let mut b = w.clone();
            b[2] = 2;
            b
        }),
        n(
            "flipped byte of the wrapped key",
            &root_key,
            org,
            &flip(w.clone(), 8 + NONCE_LEN),
        ),
        n("flipped tag", &root_key, org, &flip(w.clone(), w.len() - 1)),
        n("truncated to the header", &root_key, org, &w[..8]),
        n("empty", &root_key, org, &[]),
    ];
    let check = root.check_value().unwrap();
    let external = [
        (
            "aws kms",
            3u32,
            "awskms:alias/acme",
            b"kms-ciphertext-blob".to_vec(),
        ),
        (
            "pkcs11, empty blob",
            1,
            "pkcs11:token=hsm;object=kek",
            Vec::new(),
        ),
    ]
    .iter()
    .map(|(name, term, reference, blob)| {
        let w = WrappedTenantKey::external(KeyTerm(*term), reference, blob).unwrap();
        json!({
            "name": name,
            "term": term,
            "reference": reference,
            "blob": hex::encode(blob),
            "wrapped": hex::encode(w.as_bytes()),
        })
    })
    .collect::<Vec<_>>();
    json!({
        "description": KEY_WRAP_DESCRIPTION,
        "vectors": vectors,
        "negative": negative,
        "check_value": {
            "root_key": hex::encode(root_key),
            "check": hex::encode(check.as_bytes()),
            "negative": [
                { "name": "wrong root key", "root_key": hex::encode(other_root),
                  "check": hex::encode(check.as_bytes()) },
                { "name": "flipped tag", "root_key": hex::encode(root_key),
                  "check": hex::encode(flip(check.as_bytes().to_vec(), check.as_bytes().len() - 1)) },
                { "name": "flipped nonce", "root_key": hex::encode(root_key),
                  "check": hex::encode(flip(check.as_bytes().to_vec(), 0)) },
            ],
        },
        "external": external,
    })
}

fn root_of(v: &Value) -> RootKey {
    RootKey::from_bytes(&bytes(v, "root_key")).unwrap()
}

#[test]
fn key_wrap_vectors_unwrap_and_tampering_fails() {
    let file = load("key_wrap.json", build_key_wrap);
    for v in list(&file, "vectors") {
        let name = name(v);
        let root = root_of(v);
        let org = uuid(v, "org_id");
        let term = u32::try_from(num(v, "term")).unwrap();
        let tenant_key = bytes(v, "tenant_key");
        let stored = bytes(v, "wrapped");

        let back = root
            .unwrap_tenant_key(org, &WrappedTenantKey::from_stored_bytes(stored.clone()))
            .unwrap();
        assert_eq!(back.term(), KeyTerm(term), "{name}");
        assert_eq!(back.expose_secret().as_slice(), tenant_key, "{name}");

        let header = [b"CK".as_slice(), &[1, 1], &term.to_be_bytes()].concat();
        assert_eq!(stored.len(), 8 + NONCE_LEN + 32 + TAG_LEN, "{name}");
        assert_eq!(&stored[..8], header.as_slice(), "{name}");
        let aad = [b"coffer/kek/v1".as_slice(), org.as_bytes(), &header].concat();
        let opened = aead_open(&AES_256_GCM, root.expose_secret(), &aad, &stored[8..]);
        assert_eq!(opened.as_deref(), Some(tenant_key.as_slice()), "{name}");

        let fresh = root.wrap_tenant_key(org, &back).unwrap();
        assert_eq!(fresh.as_bytes().len(), stored.len(), "{name}");
        assert_eq!(&fresh.as_bytes()[..8], header.as_slice(), "{name}");
        assert_eq!(fresh.external_blob(), None, "{name}");
    }
    for v in list(&file, "negative") {
        let res = root_of(v).unwrap_tenant_key(
            uuid(v, "org_id"),
            &WrappedTenantKey::from_stored_bytes(bytes(v, "wrapped")),
        );
        assert_eq!(res.err(), Some(CryptoError::Decrypt), "{}", name(v));
    }

    let check = &file["check_value"];
    let root = root_of(check);
    let stored = bytes(check, "check");
    assert!(root.matches(&RootKeyCheck::from_stored_bytes(stored.clone())));
    assert_eq!(
        aead_open(
            &AES_256_GCM,
            root.expose_secret(),
            b"coffer/root-check/v1",
            &stored
        )
        .as_deref(),
        Some(b"coffer root key check v1".as_slice())
    );
    assert!(root.matches(&root.check_value().unwrap()));
    for v in list(check, "negative") {
        let check = RootKeyCheck::from_stored_bytes(bytes(v, "check"));
        assert!(!root_of(v).matches(&check), "{}", name(v));
    }

    let any_root = RootKey::from_bytes(&test_key("root")).unwrap();
    for v in list(&file, "external") {
        let name = name(v);
        let term = KeyTerm(u32::try_from(num(v, "term")).unwrap());
        let reference = text(v, "reference");
        let blob = bytes(v, "blob");
        let stored = bytes(v, "wrapped");
        let made = WrappedTenantKey::external(term, reference, &blob).unwrap();
        assert_eq!(made.as_bytes(), stored.as_slice(), "{name}");
        let expected = [
            b"CK".as_slice(),
            &[1, 2],
            &term.0.to_be_bytes(),
            &u16::try_from(reference.len()).unwrap().to_be_bytes(),
            reference.as_bytes(),
            &blob,
        ]
        .concat();
        assert_eq!(stored, expected, "{name}");
        let parsed = WrappedTenantKey::from_stored_bytes(stored);
        let ext = parsed.external_blob().unwrap();
        assert_eq!(
            (ext.term, ext.reference, ext.blob),
            (term, reference, blob.as_slice())
        );
        // The root key never opens an externally wrapped key.
        assert!(
            any_root.unwrap_tenant_key(Uuid::nil(), &parsed).is_err(),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Audit chain (audit.rs: chain_entry, event_hash, chain_hash, GENESIS)

const AUDIT_CHAIN_DESCRIPTION: &str = "Frozen: the audit hash chain (audit.rs). GENESIS is 32 \
zero bytes; entry = seq u64 BE | body (the event's JSON, exactly these UTF-8 bytes); hash = \
SHA-256(\"coffer/audit/v1\" | prev hash(32) | entry). \"chain\" is one organisation's chain \
from GENESIS (seq 1, 2, ...; each prev is the previous hash); \"vectors\" are single links \
with arbitrary prev and seq. PostgreSQL's plpgsql appends (migrations 0008, 0010) are checked \
against the same file (coffer-store tests/it/vectors.rs). Each negative's inputs must NOT \
hash to its hash.";

fn chain_case(name: &str, prev: &[u8; 32], seq: u64, body: &str) -> Value {
    json!({
        "name": name,
        "prev": hex::encode(prev),
        "seq": seq,
        "body": body,
        "entry": hex::encode(audit::chain_entry(seq, body)),
        "hash": hex::encode(audit::event_hash(prev, seq, body)),
    })
}

fn build_audit_chain() -> Value {
    let bodies = [
        r#"{"id":"0190f3a1-9e00-7000-8000-000000000001","time":1767225600,"action":"org.create","actor":"0190f3a1-0000-7000-8000-00000000aaaa","outcome":"success","target":""}"#,
        r#"{"id":"0190f3a1-9e00-7000-8000-000000000002","time":1767225601,"action":"secret.write","actor":"0190f3a1-0000-7000-8000-00000000aaaa","outcome":"success","target":"app/prod/DB_PASSWORD"}"#,
        r#"{"id":"0190f3a1-9e00-7000-8000-000000000003","time":1767225602,"action":"secret.read","actor":null,"outcome":"denied","target":"app/prod/DB_PASSWORD","reason":"Zugriff verweigert: ü, 日本, 🔑"}"#,
        "{}",
    ];
    let mut chain = Vec::new();
    let mut prev = GENESIS;
    for (i, body) in bodies.iter().enumerate() {
        let seq = i as u64 + 1;
        let c = chain_case(&format!("event {seq}"), &prev, seq, body);
        prev = array32(&c, "hash");
        chain.push(c);
    }
    let vectors = vec![
        chain_case(
            "byte order of seq",
            &sha256(b"some earlier event"),
            0x0102_0304_0506_0708,
            r#"{"action":"secret.read","target":"naïve/ℝ"}"#,
        ),
        chain_case(
            "largest seq PostgreSQL stores, empty body",
            &[0xff; 32],
            i64::MAX as u64,
            "",
        ),
    ];
    let first = &chain[0];
    let (p, s, b) = (
        array32(first, "prev"),
        num(first, "seq"),
        text(first, "body"),
    );
    let h = text(first, "hash");
    let n = |name: &str, prev: &[u8; 32], seq: u64, body: &str| json!({ "name": name, "prev": hex::encode(prev), "seq": seq, "body": body, "hash": h });
    let negative = vec![
        n("next seq", &p, s + 1, b),
        n("seq 0", &p, 0, b),
        n(
            "other predecessor",
            &flip(p.to_vec(), 31).try_into().unwrap(),
            s,
            b,
        ),
        n(
            "one body byte changed",
            &p,
            s,
            &b.replacen("org.create", "org.crease", 1),
        ),
        n(
            "same JSON, other whitespace",
            &p,
            s,
            &b.replacen(',', ", ", 1),
        ),
        n("trailing newline", &p, s, &format!("{b}\n")),
        n("seq as little endian", &p, s.swap_bytes(), b),
    ];
    json!({
        "description": AUDIT_CHAIN_DESCRIPTION,
        "genesis": hex::encode(GENESIS),
        "chain": chain,
        "vectors": vectors,
        "negative": negative,
    })
}

#[test]
fn audit_chain_vectors_hash_exactly() {
    let file = load("audit_chain.json", build_audit_chain);
    assert_eq!(bytes(&file, "genesis"), GENESIS);
    assert_eq!(GENESIS, [0u8; 32]);
    let chain = list(&file, "chain");
    let mut prev = GENESIS;
    for (i, v) in chain.iter().enumerate() {
        assert_eq!(
            array32(v, "prev"),
            prev,
            "{}: links to its predecessor",
            name(v)
        );
        assert_eq!(num(v, "seq"), i as u64 + 1, "{}", name(v));
        prev = array32(v, "hash");
    }
    for v in chain.iter().chain(list(&file, "vectors")) {
        let name = name(v);
        let (prev, seq, body) = (array32(v, "prev"), num(v, "seq"), text(v, "body"));
        let (entry, hash) = (bytes(v, "entry"), array32(v, "hash"));
        assert_eq!(audit::chain_entry(seq, body), entry, "{name}");
        assert_eq!(
            entry,
            [&seq.to_be_bytes(), body.as_bytes()].concat(),
            "{name}"
        );
        assert_eq!(audit::chain_hash(&prev, &entry), hash, "{name}");
        assert_eq!(audit::event_hash(&prev, seq, body), hash, "{name}");
        let independent = sha256(&[b"coffer/audit/v1".as_slice(), &prev, &entry].concat());
        assert_eq!(independent, hash, "{name}");
    }
    for v in list(&file, "negative") {
        let got = audit::event_hash(&array32(v, "prev"), num(v, "seq"), text(v, "body"));
        assert_ne!(got, array32(v, "hash"), "{}", name(v));
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints (audit.rs: checkpoint_message, AuditSigningKey, verify_signature)

const AUDIT_CHECKPOINT_DESCRIPTION: &str = "Frozen: audit checkpoints (audit.rs). message = \
\"coffer/audit-checkpoint/v1\" | org id(16) | seq u64 BE | chain hash(32) | created_at i64 BE; \
signature = Ed25519 (RFC 8032, deterministic) of the message by the signing key. The seed is \
RFC 8032 test 1's; it is stored as wrapped_seed = nonce(12) | AES-256-GCM(root key, seed 32) | \
tag(16) with AAD \"coffer/audit-signing-key/v1\" (AuditSigningKey::wrap/unwrap). rfc8032 \
is that RFC's signature of the empty message. Each negative must NOT verify.";

const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const RFC8032_EMPTY_SIG: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
const SIGNING_KEY_AAD: &[u8] = b"coffer/audit-signing-key/v1";

fn build_audit_checkpoint() -> Value {
    let root_key = test_key("root");
    let seed = hex::decode(RFC8032_SEED).unwrap();
    let wrapped = gcm_seal(&root_key, SIGNING_KEY_AAD, &seed);
    let root = RootKey::from_bytes(&root_key).unwrap();
    let key = AuditSigningKey::unwrap(&root, &wrapped).unwrap();
    let org = Uuid::parse_str("0190f3a1-7c2e-7b4d-9a55-3e2f1c0d9b8a").unwrap();
    let cases = [
        (
            "after event 4",
            org,
            4u64,
            sha256(b"event 4"),
            1_767_225_700i64,
        ),
        ("system chain, empty chain", Uuid::nil(), 0, GENESIS, 1),
        (
            "large seq, time before 1970",
            org,
            0x0102_0304_0506_0708,
            [0xab; 32],
            -86_400,
        ),
    ];
    let checkpoints: Vec<Value> = cases
        .iter()
        .map(|(name, org, seq, hash, at)| {
            let m = audit::checkpoint_message(*org, *seq, hash, *at);
            json!({
                "name": name,
                "org_id": org.to_string(),
                "seq": seq,
                "hash": hex::encode(hash),
                "created_at": at,
                "message": hex::encode(&m),
                "signature": hex::encode(key.sign(&m)),
            })
        })
        .collect();
    let (o, s, h, t) = (cases[0].1, cases[0].2, cases[0].3, cases[0].4);
    let m = audit::checkpoint_message(o, s, &h, t);
    let sig = key.sign(&m).to_vec();
    let pk = hex::encode(key.public_key());
    let n = |name: &str, public: &str, message: &[u8], sig: &[u8]| {
        json!({ "name": name, "public_key": public, "message": hex::encode(message),
                "signature": hex::encode(sig) })
    };
    let other = hex::encode(test_key("not a signing key"));
    let negative = vec![
        n("flipped signature byte", &pk, &m, &flip(sig.clone(), 0)),
        n(
            "flipped last signature byte",
            &pk,
            &m,
            &flip(sig.clone(), 63),
        ),
        n(
            "other seq",
            &pk,
            &audit::checkpoint_message(o, s + 1, &h, t),
            &sig,
        ),
        n(
            "other organisation",
            &pk,
            &audit::checkpoint_message(Uuid::nil(), s, &h, t),
            &sig,
        ),
        n(
            "other hash",
            &pk,
            &audit::checkpoint_message(o, s, &GENESIS, t),
            &sig,
        ),
        n(
            "other time",
            &pk,
            &audit::checkpoint_message(o, s, &h, t + 1),
            &sig,
        ),
        n("other public key", &other, &m, &sig),
        n("truncated signature", &pk, &m, &sig[..63]),
    ];
    json!({
        "description": AUDIT_CHECKPOINT_DESCRIPTION,
        "seed": RFC8032_SEED,
        "public_key": pk,
        "root_key": hex::encode(root_key),
        "wrapped_seed": hex::encode(&wrapped),
        "wrong_root_key": hex::encode(test_key("another root")),
        "rfc8032": { "message": "", "signature": RFC8032_EMPTY_SIG },
        "checkpoints": checkpoints,
        "negative": negative,
    })
}

#[test]
fn audit_checkpoint_vectors_sign_and_verify_exactly() {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let file = load("audit_checkpoint.json", build_audit_checkpoint);
    let seed = bytes(&file, "seed");
    let public = bytes(&file, "public_key");
    assert_eq!(hex::encode(&public), RFC8032_PUBLIC);
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    assert_eq!(pair.public_key().as_ref(), public.as_slice());

    let root = root_of(&file);
    let wrapped = bytes(&file, "wrapped_seed");
    assert_eq!(
        aead_open(
            &AES_256_GCM,
            root.expose_secret(),
            SIGNING_KEY_AAD,
            &wrapped
        ),
        Some(seed.clone())
    );
    let key = AuditSigningKey::unwrap(&root, &wrapped).unwrap();
    assert_eq!(key.public_key().as_slice(), public.as_slice());
    let wrong_root = RootKey::from_bytes(&bytes(&file, "wrong_root_key")).unwrap();
    assert!(AuditSigningKey::unwrap(&wrong_root, &wrapped).is_err());
    assert!(AuditSigningKey::unwrap(&root, &flip(wrapped.clone(), wrapped.len() - 1)).is_err());
    // What is stored today still opens the same way.
    let rewrapped = key.wrap(&root).unwrap();
    assert_eq!(
        aead_open(
            &AES_256_GCM,
            root.expose_secret(),
            SIGNING_KEY_AAD,
            &rewrapped
        ),
        Some(seed)
    );

    let rfc = bytes(&file["rfc8032"], "signature");
    assert_eq!(key.sign(b"").as_slice(), rfc.as_slice());
    assert!(audit::verify_signature(&public, b"", &rfc));

    for v in list(&file, "checkpoints") {
        let name = name(v);
        let (org, seq, hash, at) = (
            uuid(v, "org_id"),
            num(v, "seq"),
            array32(v, "hash"),
            int(v, "created_at"),
        );
        let message = bytes(v, "message");
        let signature = bytes(v, "signature");
        assert_eq!(
            audit::checkpoint_message(org, seq, &hash, at),
            message,
            "{name}"
        );
        let independent = [
            b"coffer/audit-checkpoint/v1".as_slice(),
            org.as_bytes(),
            &seq.to_be_bytes(),
            &hash,
            &at.to_be_bytes(),
        ]
        .concat();
        assert_eq!(independent, message, "{name}");
        assert_eq!(
            key.sign(&message).as_slice(),
            signature.as_slice(),
            "{name}"
        );
        assert_eq!(pair.sign(&message).as_ref(), signature.as_slice(), "{name}");
        assert!(
            audit::verify_signature(&public, &message, &signature),
            "{name}"
        );
    }
    for v in list(&file, "negative") {
        assert!(
            !audit::verify_signature(
                &bytes(v, "public_key"),
                &bytes(v, "message"),
                &bytes(v, "signature")
            ),
            "{}",
            name(v)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Shamir shares (shamir.rs: Share::parse/to_text, combine)

const SHAMIR_DESCRIPTION: &str = "Frozen: root key shares as operators type them (shamir.rs). \
text = base64url without padding of (share | SHA-256(share)[0..4]); share = id u8 (x, never 0) \
| 32 bytes, one per root key byte, of Shamir's scheme over GF(256) (vsss-rs Gf256). The \
shares are of one 3-of-5 split of root_key: every subset of 3 combines to it; \"insufficient\" \
subsets combine to a frozen wrong key. Negative texts must be rejected as malformed \
(CryptoError::MalformedShare); negative subsets must be refused (CryptoError::Combine).";

fn share_text(body: &[u8]) -> String {
    use base64::Engine;
    let checksum = &sha256(body)[..4];
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([body, checksum].concat())
}

fn share_body(text: &str) -> Vec<u8> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap();
    assert_eq!(raw.len(), 33 + 4, "{text}");
    let (body, checksum) = raw.split_at(33);
    assert_eq!(checksum, &sha256(body)[..4], "{text}");
    body.to_vec()
}

fn build_shamir() -> Value {
    let root_key = test_key("root");
    let root = RootKey::from_bytes(&root_key).unwrap();
    let texts: Vec<String> = shamir::split(&root, 5, 3)
        .unwrap()
        .iter()
        .map(|s| s.to_text().to_string())
        .collect();
    let shares: Vec<Value> = texts
        .iter()
        .map(|t| {
            let body = share_body(t);
            json!({ "id": body[0], "share": hex::encode(&body), "text": t })
        })
        .collect();
    let combine = |idx: &[usize]| {
        let parsed: Vec<Share> = idx
            .iter()
            .map(|&i| Share::parse(&texts[i]).unwrap())
            .collect();
        hex::encode(shamir::combine(&parsed).unwrap().expose_secret())
    };
    let insufficient: Vec<Value> = [[0usize, 1], [3, 4]]
        .iter()
        .map(|idx| json!({ "shares": idx, "combines_to": combine(idx) }))
        .collect();
    let body = share_body(&texts[0]);
    let typo = {
        let mut t = texts[0].clone().into_bytes();
        t[5] = if t[5] == b'A' { b'B' } else { b'A' };
        String::from_utf8(t).unwrap()
    };
    let bad_checksum = {
        use base64::Engine;
        let mut sum = sha256(&body)[..4].to_vec();
        sum[0] ^= 1;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([body.as_slice(), &sum].concat())
    };
    let id_zero = share_text(&[&[0u8], &body[1..]].concat());
    let short = share_text(&body[..32]);
    let long = share_text(&[body.as_slice(), &[0]].concat());
    let padded = {
        use base64::Engine;
        let mut sum = body.clone();
        sum.extend_from_slice(&sha256(&body)[..4]);
        base64::engine::general_purpose::URL_SAFE.encode(sum)
    };
    let standard_alphabet = texts
        .iter()
        .find(|t| t.contains('-') || t.contains('_'))
        .map(|t| t.replace('-', "+").replace('_', "/"));
    let mut negative = vec![
        json!({ "name": "one character changed", "text": typo }),
        json!({ "name": "checksum off by one bit", "text": bad_checksum }),
        json!({ "name": "id 0 with a valid checksum", "text": id_zero }),
        json!({ "name": "31-byte secret with a valid checksum", "text": short }),
        json!({ "name": "33-byte secret with a valid checksum", "text": long }),
        json!({ "name": "padded", "text": padded }),
        json!({ "name": "truncated", "text": &texts[0][..texts[0].len() - 2] }),
        json!({ "name": "empty", "text": "" }),
    ];
    if let Some(t) = standard_alphabet {
        negative.push(json!({ "name": "standard base64 alphabet", "text": t }));
    }
    json!({
        "description": SHAMIR_DESCRIPTION,
        "root_key": hex::encode(root_key),
        "threshold": 3,
        "shares": shares,
        "subsets": [[0, 1, 2], [4, 2, 0], [1, 3, 4], [0, 1, 2, 3, 4]],
        "insufficient": insufficient,
        "negative": negative,
        "negative_subsets": [
            { "name": "the same share twice", "shares": [0, 0] },
            { "name": "a duplicate among three", "shares": [1, 2, 1] },
            { "name": "one share", "shares": [3] },
        ],
    })
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| usize::try_from(i.as_u64().unwrap()).unwrap())
        .collect()
}

#[test]
fn shamir_vectors_parse_and_combine_exactly() {
    let file = load("shamir.json", build_shamir);
    let root_key = bytes(&file, "root_key");
    let shares = list(&file, "shares");
    let mut ids = Vec::new();
    for v in shares {
        let t = text(v, "text");
        let body = bytes(v, "share");
        let id = u8::try_from(num(v, "id")).unwrap();
        assert_eq!(share_body(t), body, "{t}");
        assert_eq!(body.len(), 33);
        assert_eq!(body[0], id);
        let parsed = Share::parse(t).unwrap();
        assert_eq!(parsed.id(), id);
        assert_eq!(parsed.to_text().as_str(), t);
        assert_eq!(Share::parse(&format!(" {t}\n")).unwrap().id(), id);
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), shares.len());
    assert!(!ids.contains(&0));

    let parse = |idx: &[usize]| -> Vec<Share> {
        idx.iter()
            .map(|&i| Share::parse(text(&shares[i], "text")).unwrap())
            .collect()
    };
    let root = RootKey::from_bytes(&root_key).unwrap();
    let check = root.check_value().unwrap();
    for subset in list(&file, "subsets") {
        let idx = indices(subset);
        let key = shamir::combine(&parse(&idx)).unwrap();
        assert_eq!(
            key.expose_secret().as_slice(),
            root_key.as_slice(),
            "{idx:?}"
        );
        assert!(key.matches(&check), "{idx:?}");
    }
    for v in list(&file, "insufficient") {
        let idx = indices(&v["shares"]);
        let key = shamir::combine(&parse(&idx)).unwrap();
        assert_eq!(
            key.expose_secret().as_slice(),
            bytes(v, "combines_to"),
            "{idx:?}"
        );
        assert!(!key.matches(&check), "{idx:?}");
    }
    for v in list(&file, "negative") {
        assert_eq!(
            Share::parse(text(v, "text")).err(),
            Some(CryptoError::MalformedShare),
            "{}",
            name(v)
        );
    }
    for v in list(&file, "negative_subsets") {
        let idx = indices(&v["shares"]);
        assert_eq!(
            shamir::combine(&parse(&idx)).err(),
            Some(CryptoError::Combine),
            "{}",
            name(v)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Root-derived keys (system.rs SystemKey, audit.rs AuditHmacKey)

const SYSTEM_DESCRIPTION: &str = "Frozen: values under keys derived from the root key. System \
keys (system.rs): key = HKDF-SHA256(salt \"coffer/system-key\", ikm root key, info \
\"coffer/system/totp/v1\" or \"coffer/system/outbox/v1\"); sealed = nonce(12) | \
AES-256-GCM(key, value) | tag(16) with AAD = owner id(16). Audit HMACs (audit.rs): key = \
HKDF-SHA256(salt \"coffer/audit-hmac/v1\", ikm root key, info org id(16)); mac = lowercase hex \
HMAC-SHA256(key, data). Negatives must fail to open (CryptoError::Decrypt).";

fn purpose(name: &str) -> (Purpose, &'static [u8]) {
    match name {
        "totp" => (Purpose::Totp, b"coffer/system/totp/v1"),
        "outbox" => (Purpose::Outbox, b"coffer/system/outbox/v1"),
        other => panic!("unknown purpose {other}"),
    }
}

fn build_system() -> Value {
    let root_key = test_key("root");
    let root = RootKey::from_bytes(&root_key).unwrap();
    let owner = Uuid::parse_str("0190f3a1-0000-7000-8000-00000000aaaa").unwrap();
    let cases = [
        ("totp seed", "totp", b"JBSWY3DPEHPK3PXP".as_slice()),
        (
            "queued mail",
            "outbox",
            b"To: ops@example.invalid\r\n\r\nhello".as_slice(),
        ),
    ];
    let vectors: Vec<Value> = cases
        .iter()
        .map(|(name, p, pt)| {
            let sealed = SystemKey::derive(&root, purpose(p).0)
                .unwrap()
                .seal(owner, pt)
                .unwrap();
            json!({ "name": name, "root_key": hex::encode(root_key), "purpose": p,
                    "owner": owner.to_string(), "plaintext": hex::encode(pt),
                    "sealed": hex::encode(sealed) })
        })
        .collect();
    let sealed = bytes(&vectors[0], "sealed");
    let n = |name: &str, root: &[u8], p: &str, owner: Uuid, sealed: &[u8]| {
        json!({ "name": name, "root_key": hex::encode(root), "purpose": p,
                "owner": owner.to_string(), "sealed": hex::encode(sealed) })
    };
    let negative = vec![
        n("wrong owner", &root_key, "totp", Uuid::nil(), &sealed),
        n("other purpose", &root_key, "outbox", owner, &sealed),
        n(
            "other root key",
            &test_key("another root"),
            "totp",
            owner,
            &sealed,
        ),
        n(
            "flipped byte",
            &root_key,
            "totp",
            owner,
            &flip(sealed.clone(), NONCE_LEN),
        ),
        n(
            "truncated",
            &root_key,
            "totp",
            owner,
            &sealed[..NONCE_LEN + TAG_LEN - 1],
        ),
    ];
    let org = Uuid::parse_str("0190f3a1-7c2e-7b4d-9a55-3e2f1c0d9b8a").unwrap();
    let hmac: Vec<Value> = [
        (org, b"tok_example".as_slice()),
        (Uuid::nil(), b"".as_slice()),
    ]
    .iter()
    .map(|(org, data)| {
        json!({ "root_key": hex::encode(root_key), "org_id": org.to_string(),
                    "data": hex::encode(data),
                    "mac": AuditHmacKey::derive(&root, *org).unwrap().mac_hex(data) })
    })
    .collect();
    json!({
        "description": SYSTEM_DESCRIPTION,
        "vectors": vectors,
        "negative": negative,
        "audit_hmac": hmac,
    })
}

#[test]
fn system_key_and_audit_hmac_vectors_hold() {
    let file = load("system.json", build_system);
    for v in list(&file, "vectors") {
        let name = name(v);
        let root = root_of(v);
        let (p, label) = purpose(text(v, "purpose"));
        let owner = uuid(v, "owner");
        let (plaintext, sealed) = (bytes(v, "plaintext"), bytes(v, "sealed"));
        let key = SystemKey::derive(&root, p).unwrap();
        assert_eq!(
            key.open(owner, &sealed).unwrap().expose_secret(),
            plaintext,
            "{name}"
        );
        let derived = hkdf_sha256(b"coffer/system-key", root.expose_secret(), label);
        assert_eq!(
            aead_open(&AES_256_GCM, &derived, owner.as_bytes(), &sealed),
            Some(plaintext.clone()),
            "{name}"
        );
        assert_eq!(
            sealed.len(),
            NONCE_LEN + plaintext.len() + TAG_LEN,
            "{name}"
        );
    }
    for v in list(&file, "negative") {
        let key = SystemKey::derive(&root_of(v), purpose(text(v, "purpose")).0).unwrap();
        let res = key.open(uuid(v, "owner"), &bytes(v, "sealed"));
        assert_eq!(res.err(), Some(CryptoError::Decrypt), "{}", name(v));
    }
    for v in list(&file, "audit_hmac") {
        let root = root_of(v);
        let org = uuid(v, "org_id");
        let data = bytes(v, "data");
        let mac = text(v, "mac");
        assert_eq!(
            AuditHmacKey::derive(&root, org).unwrap().mac_hex(&data),
            mac
        );
        let key = hkdf_sha256(
            b"coffer/audit-hmac/v1",
            root.expose_secret(),
            org.as_bytes(),
        );
        let independent = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
            &data,
        );
        assert_eq!(hex::encode(independent), mac);
        assert_ne!(
            AuditHmacKey::derive(&root, Uuid::from_u128(7))
                .unwrap()
                .mac_hex(&data),
            mac
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bearer tokens (token.rs)

const TOKEN_DESCRIPTION: &str = "Frozen: what the database keeps of a bearer token \
(token.rs): SHA-256 of the token's UTF-8 text, prefix included. New tokens are the prefix and \
43 base64url characters (256 random bits). Each negative's token must NOT hash to its hash.";

fn build_token() -> Value {
    let tokens = [
        "cfs_q0mUZ1mYrUKkcq3vA5xq7nEo0dM3uYQ1LrXlZ8S4qTg",
        "cfk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "",
    ];
    let vectors: Vec<Value> = tokens
        .iter()
        .map(|t| json!({ "token": t, "hash": hex::encode(coffer_crypto::token::hash(t).0) }))
        .collect();
    let h = text(&vectors[0], "hash").to_string();
    let t = tokens[0];
    json!({
        "description": TOKEN_DESCRIPTION,
        "vectors": vectors,
        "negative": [
            { "name": "other case", "token": t.to_uppercase(), "hash": h },
            { "name": "without prefix", "token": &t[4..], "hash": h },
            { "name": "trailing newline", "token": format!("{t}\n"), "hash": h },
        ],
    })
}

#[test]
fn token_hash_vectors_hold() {
    let file = load("token.json", build_token);
    for v in list(&file, "vectors") {
        let t = text(v, "token");
        let h = array32(v, "hash");
        assert_eq!(coffer_crypto::token::hash(t).0, h, "{t}");
        assert_eq!(sha256(t.as_bytes()), h, "{t}");
    }
    for v in list(&file, "negative") {
        assert_ne!(
            coffer_crypto::token::hash(text(v, "token")).0,
            array32(v, "hash"),
            "{}",
            name(v)
        );
    }
    let (token, hash) = coffer_crypto::token::generate("cfs_");
    let t = token.expose_secret();
    assert_eq!(t.len(), 4 + 43);
    assert!(
        t[4..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert_eq!(hash.0, sha256(t.as_bytes()));
}
