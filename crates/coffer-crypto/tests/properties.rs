//! Property tests of the envelope and key wrapping: what seals opens, and any single change
//! — a bit of the stored bytes, the context, the key — makes it fail.

use coffer_crypto::{Ciphertext, KeyTerm, RecordContext, RootKey, TenantKey, WrappedTenantKey};
use proptest::prelude::*;
use proptest::sample::Index;
use uuid::Uuid;

fn context() -> impl Strategy<Value = RecordContext> {
    (any::<[u8; 16]>(), any::<[u8; 16]>(), 1..u64::MAX - 1).prop_map(|(o, r, version)| {
        RecordContext {
            org_id: Uuid::from_bytes(o),
            record_id: Uuid::from_bytes(r),
            version,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn a_value_opens_and_any_single_change_fails(
        value in proptest::collection::vec(any::<u8>(), 0..2048),
        ctx in context(),
        at in any::<Index>(),
        bit in 0u8..8,
    ) {
        let key = TenantKey::generate(KeyTerm(3));
        let ct = key.seal(&ctx, &value).unwrap();
        let opened = key.open(&ctx, &ct).unwrap();
        prop_assert_eq!(opened.expose_secret(), value.as_slice());

        let mut bytes = ct.as_bytes().to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        if let Ok(flipped) = Ciphertext::from_stored_bytes(bytes) {
            prop_assert!(key.open(&ctx, &flipped).is_err(), "byte {} bit {} flipped", i, bit);
        }
        for other in [
            RecordContext { version: ctx.version + 1, ..ctx },
            RecordContext { org_id: Uuid::from_u128(ctx.org_id.as_u128() ^ 1), ..ctx },
            RecordContext { record_id: Uuid::from_u128(ctx.record_id.as_u128() ^ 1), ..ctx },
        ] {
            prop_assert!(key.open(&other, &ct).is_err(), "opened in another context");
        }
        prop_assert!(TenantKey::generate(KeyTerm(3)).open(&ctx, &ct).is_err());
    }

    #[test]
    fn a_wrapped_key_unwraps_and_any_single_change_fails(
        org in any::<[u8; 16]>(),
        term in 1u32..1000,
        at in any::<Index>(),
        bit in 0u8..8,
    ) {
        let (root, org) = (RootKey::generate(), Uuid::from_bytes(org));
        let key = TenantKey::generate(KeyTerm(term));
        let wrapped = root.wrap_tenant_key(org, &key).unwrap();
        let back = root.unwrap_tenant_key(org, &wrapped).unwrap();
        prop_assert_eq!(back.expose_secret(), key.expose_secret());
        prop_assert_eq!(back.term(), key.term());

        let mut bytes = wrapped.as_bytes().to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let flipped = WrappedTenantKey::from_stored_bytes(bytes);
        prop_assert!(root.unwrap_tenant_key(org, &flipped).is_err(), "byte {} bit {} flipped", i, bit);
        let other_org = Uuid::from_u128(org.as_u128() ^ 1);
        prop_assert!(root.unwrap_tenant_key(other_org, &wrapped).is_err());
        prop_assert!(RootKey::generate().unwrap_tenant_key(org, &wrapped).is_err());
    }
}
