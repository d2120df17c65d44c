//! HTTP edge tests: the router driven without a socket (error bodies, limits, headers), and a
//! real TLS server on 127.0.0.1:0 driven by the typed client.

mod router;
mod tls;
