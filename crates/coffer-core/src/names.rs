//! Names of projects, environments and parameters.

use crate::CoreError;

pub const MAX_NAME_BYTES: usize = 256;

/// Rules shared by every name: 1..=256 bytes of UTF-8, no control characters, no `/`,
/// `=` or `..` (names appear in URL paths, `.env` files and environment variables),
/// no leading or trailing whitespace.
pub fn validate(field: &'static str, name: &str) -> Result<(), CoreError> {
    if name.is_empty() {
        return Err(CoreError::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(CoreError::invalid(
            field,
            format!("must be at most {MAX_NAME_BYTES} bytes"),
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

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_ordinary_names_and_rejects_bad_ones() {
        for ok in [
            "DATABASE_URL",
            "production-eu",
            "a",
            "ünïcode",
            &"x".repeat(256),
        ] {
            assert!(validate("name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(257),
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
