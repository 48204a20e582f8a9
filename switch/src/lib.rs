//! tapnet-switch: the datapath, sans-IO.
//!
//! - [`wire`]: zero-copy views of Ethernet, ARP, IPv4, ICMP, TCP, UDP and the
//!   virtio-net header (smoltcp style: untrusted bytes never panic).
//! - [`Switch`]: the read-mostly snapshot of networks and ports
//!   ([`Topology`]), the lock-free [`fdb`] and the counters; changed by the
//!   control plane, read by workers.
//! - [`Worker`]: the run-to-completion pipeline of one thread, with a
//!   [`GatewayHook`] for services behind the gateway (DNS, NAT) and
//!   [`CaptureHook`]s.
//! - [`tunnel`], [`esp`], [`gso`]: overlay networks between hosts (VXLAN
//!   tunnel ports, proxy ARP, ESP with AES-GCM, software segmentation).
//! - [`segment`]: networks on a parent interface (macvlan, ipvlan).
//! - [`mem`]: in-memory ports for tests, replay and benchmarks.
//! - [`pcapng`]: pcapng writer and reader (with virtio-net metadata in
//!   packet comments).
//!
//! No fds, threads, clocks or randomness here: the caller passes `now`.
//! No unsafe code either, but for one cache prefetch hint (`prefetch`).
#![deny(unsafe_code)]

pub mod bpf;
pub mod build;
pub mod capture;
pub mod counters;
pub mod esp;
pub mod fdb;
pub mod fxhash;
pub mod gro;
pub mod gso;
pub mod mem;
pub mod pcapng;
pub mod pipeline;
mod prefetch;
pub mod segment;
pub mod topology;
pub mod tunnel;
pub mod wire;

pub use capture::CaptureHook;
pub use counters::{DropReason, PortStats};
pub use pipeline::{
    BatchCx, GatewayHook, HookCx, HookVerdict, NoHook, Processed, Transmit, Worker,
};
pub use topology::{
    gateway_mac, link_local_of, ConfigError, Ipv6Config, Network, NetworkConfig, NetworkId,
    OverlayConfig, Port, PortConfig, PortId, Switch, SwitchConfig, Topology, TunnelConfig,
};
