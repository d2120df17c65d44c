//! Names of projects, environments and parameters.

use crate::CoreError;

pub const MAX_NAME_CHARS: usize = 256;

/// Rules shared by every name: 1..=256 characters, no control characters, no `/`,
/// `=` or `..` (names appear in URL paths, `.env` files and environment variables),
/// no leading or trailing whitespace.
pub fn validate(field: &'static str, name: &str) -> Result<(), CoreError> {
    if name.is_empty() {
        return Err(CoreError::invalid(field, "must not be empty"));
    }
    // Characters, not bytes: the API's document can state that limit (JSON Schema counts
    // characters), and 256 of them are at most 1 KiB.
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(CoreError::invalid(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(CoreError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    if name.contains("..") {
        return Err(CoreError::invalid(field, "must not contain '..'"));
    }
    if name.contains('/') || name.contains('=') {
        return Err(CoreError::invalid(field, "must not contain '/' or '='"));
    }
    if name.trim() != name {
        return Err(CoreError::invalid(
            field,
            "must not start or end with whitespace",
        ));
    }
    Ok(())
}

/// [`validate`] for a name being created (a project, environment, parameter, API key or
/// organisation): it must also be in Unicode NFC, so that two names that look the same
/// cannot be two things. Lookups take any valid name, so that names stored before this
/// rule can still be read, listed and deleted.
pub fn validate_new(field: &'static str, name: &str) -> Result<(), CoreError> {
    validate(field, name)?;
    if !unicode_normalization::is_nfc(name) {
        return Err(CoreError::invalid(
            field,
            "must be in Unicode NFC form (composed characters, as most keyboards type them)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{validate, validate_new};

    #[test]
    fn new_names_must_be_nfc() {
        assert!(validate_new("name", "caf\u{e9}").is_ok());
        assert!(
            validate("name", "cafe\u{301}").is_ok(),
            "an old name is still found"
        );
        assert!(validate_new("name", "cafe\u{301}").is_err());
    }

    #[test]
    fn accepts_ordinary_names_and_rejects_bad_ones() {
        for ok in [
            "DATABASE_URL",
            "production-eu",
            "a",
            "ünïcode",
            &"x".repeat(256),
            // 256 characters of four bytes each: the limit counts characters.
            &"\u{1F511}".repeat(256),
        ] {
            assert!(validate("name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(257),
            &"\u{e9}".repeat(257),
            "a\nb",
            "a\u{7f}",
            "..",
            "a/../b",
            "a/b",
            "A=B",
            " x",
            "x ",
            "tab\t",
        ] {
            assert!(validate("name", bad).is_err(), "{bad:?}");
        }
    }
}
