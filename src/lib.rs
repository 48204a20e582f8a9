//! tapnet: Docker-style container networking entirely in user space.
//!
//! The root package owns everything that touches the operating system: the
//! daemon and its HTTP API (`daemon`), the CLI (`cli`, `client`), persisted
//! state (`state`), IPAM (`ipam`), the network drivers, one per kind
//! (`drivers`), the worker threads that move frames
//! between TAP queues and the switch pipeline (`dataplane`), the device and
//! namespace plumbing (`sys`, the only place with `unsafe`), sandboxes
//! (`sandbox`) and the offline `replay` tool.

#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod cluster;
pub mod daemon;
pub mod dataplane;
pub mod drivers;
pub mod ipam;
pub mod model;
pub mod replay;
pub mod sandbox;
pub mod state;
#[allow(unsafe_code)]
pub mod sys;
