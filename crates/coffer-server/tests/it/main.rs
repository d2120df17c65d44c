//! HTTP edge tests: the router driven without a socket (error bodies, limits, headers), and a
//! real TLS server on 127.0.0.1:0 driven by the typed client.

// Test helpers panic on unexpected failures by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod bodies;
mod external;
mod identity;
mod matrix;
mod postgres;
mod router;
mod tls;
