//! SQL fragments of the SQLite backend.

/// Columns of a parameter joined with one of its versions and that version's ciphertext.
macro_rules! value_columns {
    () => {
        "SELECT p.id, p.org_id, p.env_id, p.name, p.current_version, p.deleted, p.updated_at, \
         v.param_id, v.version, v.is_secret, v.action, v.actor_id, v.created_at, c.ciphertext \
         FROM params p "
    };
}
/// Current version of each parameter.
macro_rules! value_select {
    () => {
        concat!(
            value_columns!(),
            "JOIN param_versions v ON v.param_id = p.id AND v.version = p.current_version \
             LEFT JOIN credentials c ON c.id = v.credential_id"
        )
    };
}
/// A chosen version (first bind parameter).
macro_rules! value_select_at {
    () => {
        concat!(
            value_columns!(),
            "JOIN param_versions v ON v.param_id = p.id AND v.version = ? \
             LEFT JOIN credentials c ON c.id = v.credential_id"
        )
    };
}
pub(super) use {value_columns, value_select, value_select_at};
