//! tapnet-dns: the embedded DNS of user-defined networks, sans-IO.
//!
//! - [`registry`]: networks and endpoints as the control plane states
//!   them, compiled into a lock-free read-mostly [`Snapshot`].
//! - [`responder`]: query bytes in, answer bytes out (Docker's embedded
//!   DNS rules), into a caller buffer, with a caller-seeded RNG.
//! - [`hook`]: [`DnsHook`], the responder as the switch's
//!   [`tapnet_switch::GatewayHook`]: UDP and TCP to the gateway's IPv4
//!   or IPv6 address, port 53, answered inline; names that are not local
//!   queued as [`ForwardRequest`]s for the daemon's forwarder.
//! - [`tcp`]: DNS over TCP answered without connection state (SYN
//!   cookies), one reply frame per segment.
//! - [`wire`]: the bounded DNS message parser and encoders.
//! - [`ip`]: the IPv4 and IPv6 headers and checksums of the frames.
//!
//! No sockets, threads, clocks or OS randomness here: the upstream
//! forwarder (UDP and TCP) and `/etc/resolv.conf` are the daemon's edges.
#![forbid(unsafe_code)]

pub mod hook;
pub mod ip;
pub mod registry;
pub mod responder;
pub mod rng;
pub mod tcp;
pub mod wire;

pub use hook::{forward_queue, DnsHook, DnsStats, ForwardRequest, ForwardRx, ForwardTx, TcpReply};
pub use registry::{
    EndpointSpec, Link, Lookup, NetworkSpec, Registry, RegistryData, RegistryError, Resolved,
    Snapshot,
};
pub use responder::{Answered, Outcome, Responder, ResponderConfig, Transport};
pub use rng::FastRng;
