//! Storage conformance: every backend must pass the same suite (SQLite, and PostgreSQL on
//! 127.0.0.1:5432 or `COFFER_TEST_PG_URL`). `suite` holds the checks,
//! written against `&dyn Store`; each backend module runs all of them on a fresh database.

// Test helpers panic on unexpected failures by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_corpus;
mod postgres;
mod sqlite;
mod suite;
mod vectors;
