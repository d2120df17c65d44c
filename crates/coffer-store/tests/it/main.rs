//! Storage conformance: every backend must pass the same suite. `suite` holds the checks,
//! written against `&dyn Store`; each backend module runs all of them on a fresh database.

mod sqlite;
mod suite;
