//! tapnet-nat: connection table and host-socket gateway (sans-IO core).
//!
//! [`conntrack`] is the connection table: flows between containers and the
//! outside, their states, timeouts and limits.
#![forbid(unsafe_code)]

pub mod conntrack;
pub mod leg;

pub use conntrack::{
    Config, ConnTrack, CreateError, Direction, EventError, FlowHandle, FlowKey, FlowState,
    FlowView, Protocol, Side, SocketEvent, TcpFlags, TcpState, Timeouts, MAX_CAPACITY,
};
