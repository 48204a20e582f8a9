//! Device and namespace plumbing: the only module of the root package with
//! `unsafe` code (ioctls on `/dev/net/tun`, `setns`/`unshare`, SCM_RIGHTS).
//! Every unsafe block carries a `// SAFETY:` comment.
//!
//! - [`tap`]: multi-queue TAP devices with a virtio-net header and offloads.
//! - [`ns`]: namespaces (unshare, setns, uid/gid maps, `NS_GET_USERNS`).
//! - [`fdpass`]: file descriptors over Unix sockets (SCM_RIGHTS).
//! - [`netlink`]: a small synchronous rtnetlink client (links, addresses,
//!   routes) for the current network namespace.
//! - [`process`]: hooks run in a forked child before `exec`.

pub mod fdpass;
pub mod netlink;
pub mod ns;
pub mod process;
pub mod tap;
