//! tapnet-nat: connection table and host-socket gateway (sans-IO core). Filled by the NAT issue.
#![forbid(unsafe_code)]
