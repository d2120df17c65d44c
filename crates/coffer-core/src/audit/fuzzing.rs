//! What the `audit_export` fuzz target in `fuzz/` checks of arbitrary input; the committed
//! corpus is also replayed on stable. Not part of the API.

/// An audit export as `coffer audit verify --file` reads it: arbitrary bytes never panic,
/// and a report says intact exactly when it names no problem.
pub fn verify_export(data: &[u8]) {
    if let Ok(r) = super::verify_export(data, None) {
        assert_eq!(r.ok, r.first_problem.is_none(), "an inconsistent report");
    }
}
