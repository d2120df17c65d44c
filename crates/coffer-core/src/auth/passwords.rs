//! Password hashing (Argon2id on the blocking pool), the dummy hash that keeps unknown
//! accounts as slow as known ones, and username normalisation.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use coffer_crypto::token;

use crate::CoreError;

pub(crate) async fn hash_password(password: String) -> Result<String, CoreError> {
    let password = zeroize::Zeroizing::new(password);
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        coffer_crypto::random_bytes(&mut salt);
        Argon2::default()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|_| CoreError::Internal("password hashing failed"))
    })
    .await
    .map_err(|_| CoreError::Internal("password hashing task failed"))?
}

pub(crate) async fn verify_password(password: String, hash: String) -> Result<bool, CoreError> {
    let password = zeroize::Zeroizing::new(password);
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .map_err(|_| CoreError::Internal("password verification task failed"))
}

/// A valid Argon2id hash of a random password nobody knows, with the same parameters as
/// real ones, so verifying against it costs the same.
pub(crate) fn dummy_hash() -> Result<String, CoreError> {
    let pw = token::generate_password();
    let mut salt = [0u8; 16];
    coffer_crypto::random_bytes(&mut salt);
    Argon2::default()
        .hash_password_with_salt(pw.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| CoreError::Internal("password hashing failed"))
}

/// Usernames and e-mail addresses are compared after NFKC normalisation and case folding,
/// so `Alice`, ` alice` and `ａｌｉｃｅ` (full-width) are one account.
pub fn normalize_username(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let folded: String = name.trim().nfkc().collect::<String>().to_lowercase();
    // Lower-casing can produce sequences that are not NFKC; normalise once more.
    folded.nfkc().collect()
}

pub(crate) fn validate_password(password: &str) -> Result<(), CoreError> {
    if password.chars().count() < 12 {
        return Err(CoreError::invalid(
            "password",
            "must be at least 12 characters",
        ));
    }
    // At most 1 KiB to hash; counted in characters, as the API's document counts them.
    if password.chars().count() > 256 {
        return Err(CoreError::invalid(
            "password",
            "must be at most 256 characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_normalise_with_nfkc_and_case_folding() {
        assert_eq!(normalize_username("  Alice "), "alice");
        assert_eq!(normalize_username("ＡＬＩＣＥ"), "alice");
        assert_eq!(normalize_username("\u{FB01}le"), "file");
        assert_eq!(normalize_username("Bob@Example.COM"), "bob@example.com");
    }

    #[tokio::test]
    async fn password_hash_roundtrip_and_dummy_rejects() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(
            verify_password("correct horse".into(), h.clone())
                .await
                .unwrap()
        );
        assert!(!verify_password("wrong".into(), h).await.unwrap());
        assert!(
            !verify_password("anything".into(), dummy_hash().unwrap())
                .await
                .unwrap()
        );
    }
}
