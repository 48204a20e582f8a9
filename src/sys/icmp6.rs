//! ICMPv6 raw sockets: the kernel's type filter (`ICMP6_FILTER`, RFC 3542
//! 3.2), so that a raw socket kept for echo replies is not woken by every
//! Neighbor Discovery message of the host.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `ICMPV6_FILTER` (linux/icmpv6.h); not in the libc crate.
const ICMPV6_FILTER: libc::c_int = 1;

/// Lets only ICMPv6 messages of the given `types` reach the raw socket
/// `fd` (Linux's filter: a set bit blocks its type).
pub fn pass_only(fd: BorrowedFd, types: &[u8]) -> io::Result<()> {
    let mut filter = [u32::MAX; 8];
    for &t in types {
        filter[usize::from(t >> 5)] &= !(1u32 << (t & 31));
    }
    // SAFETY: passes a pointer to a live 32-byte array (the kernel's
    // `struct icmp6_filter`) and its exact size; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMPV6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
