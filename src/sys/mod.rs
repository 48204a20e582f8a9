//! Device and namespace plumbing: the only module of the root package with
//! `unsafe` code (ioctls on `/dev/net/tun`, `setns`/`unshare`, SCM_RIGHTS, `recvmmsg`/`sendmmsg`).
//! Every unsafe block carries a `// SAFETY:` comment.
//!
//! - [`tap`]: multi-queue TAP devices with a virtio-net header and offloads.
//! - [`ns`]: namespaces (unshare, setns, uid/gid maps, `NS_GET_USERNS`).
//! - [`fdpass`]: file descriptors over Unix sockets (SCM_RIGHTS).
//! - [`netlink`]: a small synchronous rtnetlink client (links, addresses,
//!   routes) for the current network namespace.
//! - [`process`]: hooks run in a forked child before `exec`.
//! - [`udp`]: batched `recvmmsg`/`sendmmsg` for the VXLAN tunnel.

pub mod fdpass;
pub mod netlink;
pub mod ns;
pub mod process;
pub mod tap;
pub mod udp;

/// Restores the default SIGPIPE action (terminate), as Unix command-line
/// tools have it, so `tapnet inspect x | head -1` ends quietly instead of
/// failing on a broken pipe. Only for short-lived CLI commands: the daemon
/// keeps Rust's default (ignored) so a client hanging up never kills it.
pub fn default_sigpipe() {
    // SAFETY: installs the default disposition for SIGPIPE; no handler
    // code runs, and it is called once at start, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
