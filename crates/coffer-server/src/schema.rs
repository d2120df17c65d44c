//! The OpenAPI shapes of values whose rules live in code (names, e-mail addresses, key
//! lifetimes), written once here so that the document states exactly what the server
//! accepts: schemathesis (scripts/api-contract.sh) checks both directions.

use utoipa::openapi::schema::{Array, ArrayBuilder, Object, ObjectBuilder, SchemaType, Type};

/// A name (crates/coffer-core/src/names.rs): 1-256 characters, no control characters, `/`,
/// `=` or `..`, no whitespace at either end. A new name must also be in Unicode NFC, which
/// a pattern cannot say.
pub const NAME_PATTERN: &str =
    r"^(?!.*\.\.)[^\x00-\x1f\x7f-\x9f/=\s]([^\x00-\x1f\x7f-\x9f/=]*[^\x00-\x1f\x7f-\x9f/=\s])?$";

/// An e-mail address as Coffer accepts it (crates/coffer-core/src/members.rs): ASCII, a
/// local part of the characters RFC 5322 allows unquoted, and a dotted domain (an
/// international domain in its `xn--` form).
pub const EMAIL_PATTERN: &str =
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$";

/// An API key's lifetime: 1-366 days (`30d`) or 1-8784 hours (`12h`).
pub const LIFETIME_PATTERN: &str = "^((36[0-6]|3[0-5][0-9]|[12][0-9]{2}|[1-9][0-9]?)d\
     |(878[0-4]|87[0-7][0-9]|8[0-6][0-9]{2}|[1-7][0-9]{3}|[1-9][0-9]{0,2})h)$";

pub fn name() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(256))
        .pattern(Some(NAME_PATTERN))
        .build()
}

pub fn name_list() -> Array {
    ArrayBuilder::new().items(name()).build()
}

pub fn email() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(254))
        .pattern(Some(EMAIL_PATTERN))
        .build()
}

pub fn lifetime() -> Object {
    nullable(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(LIFETIME_PATTERN))
            .description(Some(
                "1-366 days (`30d`) or 1-8784 hours (`12h`); default 90d",
            ))
            .build(),
    )
}

/// A password for a new account: 12 to 256 characters.
pub fn new_password() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(12))
        .max_length(Some(256))
        .build()
}

/// A new username: 1-64 ASCII letters, digits, `.`, `_` or `-`, no `..`
/// (crates/coffer-core/src/members.rs).
pub fn username() -> Object {
    nullable(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^(?!.*\.\.)[A-Za-z0-9._-]{1,64}$"))
            .build(),
    )
}

/// `null` allowed too: an optional field that may be sent as `null`.
pub fn nullable(mut o: Object) -> Object {
    o.schema_type = SchemaType::from_iter([Type::String, Type::Null]);
    o
}

pub fn nullable_name() -> Object {
    nullable(name())
}

pub fn nullable_email() -> Object {
    nullable(email())
}
