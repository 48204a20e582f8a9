//! Device and namespace plumbing: the only module of the root package with
//! `unsafe` code (ioctls on `/dev/net/tun`, `setns`/`unshare`, SCM_RIGHTS, `bpf`, `recvmmsg`/`sendmmsg`,
//! AIO, `madvise`).
//! Every unsafe block carries a `// SAFETY:` comment.
//!
//! - [`aio`]: many small writes in one `io_submit` (a worker's frames to
//!   TAPs).
//! - [`tap`]: multi-queue TAP devices with a virtio-net header and offloads.
//! - [`bpf`]: a TAP's queue steering program (eBPF, `TUNSETSTEERINGEBPF`).
//! - [`ns`]: namespaces (unshare, setns, uid/gid maps, `NS_GET_USERNS`).
//! - [`fdpass`]: file descriptors over Unix sockets (SCM_RIGHTS).
//! - [`icmp6`]: the type filter of raw ICMPv6 sockets.
//! - [`mem`]: the pages of idle TCP flows' empty rings, given back.
//! - [`netlink`]: a small synchronous rtnetlink client (links, addresses,
//!   routes) for the current network namespace.
//! - [`process`]: hooks run in a forked child before `exec`.
//! - [`udp`]: batched `recvmmsg`/`sendmmsg` for the VXLAN tunnel.
//! - [`packet`]: AF_PACKET sockets on a macvlan/ipvlan network's parent.
//! - [`rawip`]: raw IP sockets bound to an ipvlan l3 network's parent (its
//!   router port).

pub mod aio;
pub mod bpf;
pub mod fdpass;
pub mod icmp6;
pub mod mem;
pub mod netlink;
pub mod ns;
pub mod packet;
pub mod process;
pub mod rawip;
pub mod tap;
pub mod udp;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// Runs `request`, an ioctl that takes no argument and answers with a new
/// file descriptor (`NS_GET_USERNS` on a namespace, `TUNGETDEVNETNS` on a
/// TAP queue), on `fd`; the caller owns what it returns.
fn ioctl_new_fd(fd: &impl AsFd, request: libc::Ioctl) -> std::io::Result<OwnedFd> {
    // SAFETY: such an ioctl reads and writes no memory of ours; `fd` is a
    // valid fd borrowed for the call (of the wrong kind, it fails).
    let ret = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

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

/// Threshold of [`large_allocations_from_the_kernel`]: the size of one
/// TCP leg's smaller ring would do; 128 KiB is glibc's starting value.
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Makes glibc serve every allocation of [`MMAP_THRESHOLD`] or more with
/// its own `mmap` and give it back with `munmap` when freed. By default
/// glibc raises that threshold each time such a block is freed (up to
/// 32 MiB), after which the NAT's per-flow rings (1 and 2 MiB, touched only
/// as data flows) come from the heap: reused heap memory is zeroed by
/// `calloc` (so resident at once) and never returns to the system. With a
/// fixed threshold an idle relayed flow costs about 10 KiB instead of 31
/// and an idle container port 25 KiB instead of 130 (`bench/memory.sh`),
/// at the price of two system calls per ring. The daemon calls it first
/// thing, before any thread exists. Not glibc: nothing to do.
pub fn large_allocations_from_the_kernel() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes a malloc parameter; it is called before
    // any other thread exists, so no allocation runs concurrently.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// For unit tests that need a real file: one readable and writable that
/// no path names (made in the temporary directory, named after `tag`, the
/// process and the thread, then unlinked).
#[cfg(test)]
pub(crate) fn unlinked_temp_file(tag: &str) -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "tapnet-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create temp file");
    std::fs::remove_file(&path).expect("unlink temp file");
    file
}
