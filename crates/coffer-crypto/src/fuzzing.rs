//! What the fuzz targets in `fuzz/` check of arbitrary input. The committed corpus is also
//! replayed on stable by `tests/fuzz_corpus.rs`. Not part of the API.

use std::sync::LazyLock;

use uuid::Uuid;

use crate::shamir::{Share, combine};
use crate::{Ciphertext, KeyTerm, RecordContext, RootKey, TenantKey, WrappedTenantKey};

// Keys the fuzzer never sees: nothing it builds may open under them.
static TENANT: LazyLock<TenantKey> = LazyLock::new(|| TenantKey::generate(KeyTerm(1)));
static ROOT: LazyLock<RootKey> = LazyLock::new(RootKey::generate);

/// Stored bytes read back as a value's ciphertext and as a wrapped tenant key: parsing
/// never panics, and nothing made without the key opens or unwraps.
pub fn envelope(data: &[u8]) {
    let ctx = RecordContext {
        org_id: Uuid::nil(),
        record_id: Uuid::nil(),
        version: 1,
    };
    if let Ok(ct) = Ciphertext::from_stored_bytes(data.to_vec()) {
        let _ = (ct.scheme(), ct.key_term());
        assert!(TENANT.open(&ctx, &ct).is_err(), "a forged value opened");
    }
    let wrapped = WrappedTenantKey::from_stored_bytes(data.to_vec());
    let _ = wrapped.external_blob();
    assert!(
        ROOT.unwrap_tenant_key(Uuid::nil(), &wrapped).is_err(),
        "a forged tenant key unwrapped"
    );
}

/// Share texts as operators paste them, one per line: parsing never panics, a share that
/// parses reads back the same from its own text form, and combining any of them never
/// panics.
pub fn shamir(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let shares: Vec<Share> = text.lines().filter_map(|l| Share::parse(l).ok()).collect();
    for s in &shares {
        let again = Share::parse(&s.to_text());
        assert!(
            again.is_ok_and(|a| a.id() == s.id()),
            "a share does not read back from its own text"
        );
    }
    let _ = combine(&shares);
}
