//! tapnet-dns: name registry and inline responder (sans-IO core). Filled by the DNS issue.
#![forbid(unsafe_code)]
