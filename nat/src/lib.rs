//! tapnet-nat: the NAT gateway, sans-IO.
//!
//! - [`gateway`]: [`Gateway`], containers' frames and host-socket events
//!   in; frames towards containers, socket operations and timer deadlines
//!   out; the clock passed in. Policy, TCP (through [`leg`]), UDP, ICMP
//!   echo, published ports, limits and expiry.
//! - [`conntrack`]: the connection table: flows between containers and
//!   the outside, their states, timeouts and limits.
//! - [`leg`]: the container side of a relayed TCP connection, a smoltcp
//!   socket per flow.
//! - [`drops`]: one counter per reason the NAT drops something.
//! - [`frag`]: reassembly of the IP fragments containers send out.
//! - [`ip6`]: the IPv6 and ICMPv6 headers the NAT reads and writes.
//!
//! No sockets, threads, clocks or OS randomness here: the daemon's NAT
//! thread (`src/dataplane/nat.rs`) owns the host sockets and drives the
//! gateway.
#![forbid(unsafe_code)]

pub mod conntrack;
pub mod drops;
pub mod frag;
pub mod gateway;
pub mod ip6;
pub mod leg;

pub use conntrack::{
    Config, ConnTrack, CreateError, Direction, EventError, FlowHandle, FlowKey, FlowState,
    FlowView, Protocol, Side, SocketEvent, TcpFlags, TcpState, Timeouts, MAX_CAPACITY,
};
pub use drops::{DropCounts, NatDrop, SharedDrops};
pub use gateway::{
    classify, Claim, Config as GatewayConfig, ConnectError, FrameAction, Gateway, HostEvent,
    IcmpMode, NetInfo, Outgoing, RingReleases, SocketId, SocketOp, Transmit,
};
