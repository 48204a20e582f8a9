//! Batched datagram I/O for the VXLAN tunnel: `recvmmsg`/`sendmmsg` on a
//! UDP socket (VXLAN) or a raw IPv4 socket of protocol 50 (ESP), many
//! datagrams per system call; and for the NAT's UDP sockets, runs of
//! datagrams in one write (`UDP_SEGMENT`, [`send_segmented`]) or one read
//! (`UDP_GRO`, [`recv_coalesced`], where the kernel's TAPs take the
//! super-frame it becomes: [`taps_take_uso`]).
//!
//! A [`Batch`] owns `cap` buffers of [`SLOT`] bytes and the `mmsghdr`,
//! `iovec` and `sockaddr_in` arrays the calls need, allocated once: no
//! allocation per datagram. The arrays hold pointers into the batch, so
//! they are filled right before each call (the batch may have moved).
//! A `Batch` stays on the thread that made it (it is not `Send`).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Bytes of one datagram buffer: an inner frame of a network with MTU up
/// to 16 KiB less the encapsulation. Longer datagrams are truncated on
/// receipt ([`Batch::truncated`]) and refused on sending.
pub const SLOT: usize = 16 * 1024;

/// A `UDP_SEGMENT` control message (`cmsghdr` and a `u16`, padded to
/// `CMSG_SPACE(2)`).
#[repr(C)]
#[derive(Clone, Copy)]
struct GsoCmsg {
    hdr: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

/// Datagrams one `UDP_SEGMENT` send may carry (the kernel's limit).
pub const GSO_MAX_SEGS: usize = 64;
/// Bytes one `UDP_SEGMENT` send may carry (a UDP payload's limit).
pub const GSO_MAX_BYTES: usize = 65_000;

pub struct Batch {
    buf: Box<[u8]>,
    cap: usize,
    /// Datagrams in the batch.
    n: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    addr: Vec<SocketAddrV4>,
    trunc: Vec<bool>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    /// Send runs of equal-sized datagrams to one destination as one
    /// `UDP_SEGMENT` message (the kernel splits them): [`Batch::use_udp_gso`].
    gso: bool,
    cmsgs: Vec<GsoCmsg>,
    /// Per message of a grouped send: (first datagram, datagrams).
    groups: Vec<(usize, usize)>,
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

impl Batch {
    pub fn new(cap: usize) -> Batch {
        let cap = cap.max(1);
        let zero_name = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        Batch {
            buf: vec![0u8; cap * SLOT].into_boxed_slice(),
            cap,
            n: 0,
            start: vec![0; cap],
            len: vec![0; cap],
            addr: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); cap],
            trunc: vec![false; cap],
            // SAFETY: mmsghdr and iovec are plain C structs of integers
            // and pointers, for which all-zero bytes are valid values.
            hdrs: (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect(),
            // SAFETY: as above.
            iovs: (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect(),
            names: vec![zero_name; cap],
            gso: false,
            // SAFETY: cmsghdr is a plain C struct of integers.
            cmsgs: vec![unsafe { std::mem::zeroed() }; cap],
            groups: Vec::with_capacity(cap),
        }
    }

    /// Sends runs of equal-sized datagrams to one destination as one
    /// `UDP_SEGMENT` (UDP GSO) message each, on a UDP socket. Turned off
    /// again by itself when the kernel refuses it.
    pub fn use_udp_gso(&mut self, on: bool) {
        self.gso = on;
    }

    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    pub fn is_full(&self) -> bool {
        self.n == self.cap
    }
    pub fn clear(&mut self) {
        self.n = 0;
    }

    /// Datagram `i` of a received batch: sender and bytes.
    pub fn get(&self, i: usize) -> (SocketAddrV4, &[u8]) {
        let s = i * SLOT;
        (self.addr[i], &self.buf[s..s + self.len[i]])
    }
    /// Datagram `i` of a received batch, writable (decryption in place).
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let s = i * SLOT;
        &mut self.buf[s..s + self.len[i]]
    }
    /// Whether datagram `i` was longer than [`SLOT`] (cut).
    pub fn truncated(&self, i: usize) -> bool {
        self.trunc[i]
    }

    /// The buffer of the next datagram to send (call [`Batch::push`] once
    /// it is written); None when the batch is full.
    pub fn next_slot(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let s = self.n * SLOT;
        Some(&mut self.buf[s..s + SLOT])
    }
    /// Queues `next_slot()[range]` for `dst`.
    pub fn push(&mut self, range: std::ops::Range<usize>, dst: SocketAddrV4) {
        if self.is_full() || range.end > SLOT {
            return;
        }
        let i = self.n;
        self.start[i] = i * SLOT + range.start;
        self.len[i] = range.len();
        self.addr[i] = dst;
        self.n += 1;
    }

    /// Fills the call arrays to receive into all `cap` buffers.
    fn prepare_recv(&mut self) {
        for i in 0..self.cap {
            self.iovs[i] = libc::iovec {
                iov_base: self.buf[i * SLOT..].as_mut_ptr().cast(),
                iov_len: SLOT,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
    }

    /// Receives up to `cap` datagrams without blocking (`recvmmsg`,
    /// `MSG_DONTWAIT`); returns how many (0 when none is waiting).
    pub fn recv(&mut self, fd: BorrowedFd) -> io::Result<usize> {
        self.n = 0;
        self.prepare_recv();
        // SAFETY: `hdrs[..cap]` point at `iovs`, `names` and disjoint
        // SLOT-byte ranges of `buf`, all owned by `self` and alive for the
        // call, with their true lengths; the kernel writes at most those.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.cap as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        let n = r as usize;
        for i in 0..n {
            let h = &self.hdrs[i];
            self.len[i] = (h.msg_len as usize).min(SLOT);
            self.trunc[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.addr[i] = from_sockaddr(&self.names[i]);
        }
        self.n = n;
        Ok(n)
    }

    /// Sends the queued datagrams (`sendmmsg`, non-blocking) and empties
    /// the batch; `done` is called once per datagram, in order, with its
    /// length or the error it met. A full socket buffer fails the rest.
    /// With [`Batch::use_udp_gso`], each run of equal-sized datagrams to
    /// one destination is one `UDP_SEGMENT` message; when the kernel
    /// refuses one, GSO turns itself off and the rest go one by one.
    pub fn send(&mut self, fd: BorrowedFd, mut done: impl FnMut(io::Result<usize>)) {
        let mut from = 0;
        while from < self.n {
            from = self.send_from(fd, from, &mut done);
        }
        self.n = 0;
    }

    /// Sends datagrams `from..n` as messages (one datagram each, or runs
    /// of them with GSO); returns where to go on: `n`, or the first
    /// datagram of a GSO message the kernel refused (not yet reported).
    fn send_from(
        &mut self,
        fd: BorrowedFd,
        from: usize,
        done: &mut impl FnMut(io::Result<usize>),
    ) -> usize {
        let n = self.n;
        self.groups.clear();
        let mut i = from;
        while i < n {
            let (size, to) = (self.len[i], self.addr[i]);
            let mut j = i + 1;
            let mut bytes = size;
            while self.gso
                && j < n
                && j - i < GSO_MAX_SEGS
                && self.addr[j] == to
                && self.len[j] <= size
                && bytes + self.len[j] <= GSO_MAX_BYTES
                && self.len[j - 1] == size
            {
                bytes += self.len[j];
                j += 1;
            }
            self.groups.push((i, j - i));
            i = j;
        }
        for (g, &(first, count)) in self.groups.iter().enumerate() {
            for k in first..first + count {
                self.iovs[k] = libc::iovec {
                    iov_base: self.buf[self.start[k]..].as_mut_ptr().cast(),
                    iov_len: self.len[k],
                };
            }
            self.names[g] = sockaddr(self.addr[first]);
            let h = &mut self.hdrs[g];
            h.msg_hdr.msg_name = (&mut self.names[g] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[first];
            h.msg_hdr.msg_iovlen = count;
            if count > 1 {
                let c = &mut self.cmsgs[g];
                c.hdr.cmsg_len = (std::mem::size_of::<libc::cmsghdr>() + 2) as _;
                c.hdr.cmsg_level = libc::SOL_UDP;
                c.hdr.cmsg_type = libc::UDP_SEGMENT;
                c.size = self.len[first] as u16;
                h.msg_hdr.msg_control = (c as *mut GsoCmsg).cast();
                h.msg_hdr.msg_controllen = std::mem::size_of::<GsoCmsg>();
            } else {
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
            }
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        let groups = self.groups.len();
        let mut g = 0;
        while g < groups {
            // SAFETY: `hdrs[g..groups]` point at `names`, `cmsgs` and runs
            // of `iovs` that point at ranges of `buf` inside their slots,
            // all owned by `self` and alive for the call; the kernel only
            // reads them.
            let r = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.hdrs[g..].as_mut_ptr(),
                    (groups - g) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            let (first, count) = self.groups[g];
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
                {
                    for _ in first..n {
                        done(Err(io::Error::from(io::ErrorKind::WouldBlock)));
                    }
                    return n;
                }
                if count > 1 {
                    // GSO refused (a device or path that cannot take it):
                    // plain datagrams from here on.
                    tracing::debug!("udp: UDP_SEGMENT refused ({e}); sending datagrams one by one");
                    self.gso = false;
                    return first;
                }
                // This datagram failed (unreachable, too big): skip it.
                done(Err(e));
                g += 1;
                continue;
            }
            for &(first, count) in &self.groups[g..g + r as usize] {
                for k in first..first + count {
                    done(Ok(self.len[k]));
                }
            }
            g += r as usize;
        }
        n
    }
}

/// Sends `data` as one `UDP_SEGMENT` message of datagrams `segment`
/// bytes long (the last one shorter) on UDP socket `fd`, to `to` when
/// given (an unconnected socket), without blocking and without
/// allocating: the bytes sent, or the kernel's refusal (a segment longer
/// than the route's MTU allows, more than 64 segments: `EINVAL`; a full
/// buffer: `WouldBlock`).
pub fn send_segmented(
    fd: BorrowedFd,
    data: &[u8],
    to: Option<std::net::SocketAddr>,
    segment: u16,
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let namelen = match to {
        None => 0,
        Some(std::net::SocketAddr::V4(a)) => {
            let sin = sockaddr(a);
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&mut name as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        Some(std::net::SocketAddr::V6(a)) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut name as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let mut cmsg = GsoCmsg {
        // SAFETY: all-zero is a valid cmsghdr; its fields are set below.
        hdr: unsafe { std::mem::zeroed() },
        size: segment,
        _pad: [0; 6],
    };
    cmsg.hdr.cmsg_len = (std::mem::size_of::<libc::cmsghdr>() + 2) as _;
    cmsg.hdr.cmsg_level = libc::SOL_UDP;
    cmsg.hdr.cmsg_type = libc::UDP_SEGMENT;
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the fields it needs are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if namelen > 0 {
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = namelen as libc::socklen_t;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut cmsg as *mut GsoCmsg).cast();
    msg.msg_controllen = std::mem::size_of::<GsoCmsg>();
    // SAFETY: `msg` points at `name`, `iov` (which points at `data`) and
    // `cmsg`, all alive for the call; the kernel only reads them.
    let r = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Lets the kernel fragment what exceeds the path MTU instead of
/// refusing it (`IP_MTU_DISCOVER` = `IP_PMTUDISC_DONT`), as Linux's vxlan
/// does with `df unset`.
pub fn fragment_freely(fd: BorrowedFd) -> io::Result<()> {
    let v: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: passes a pointer to a live c_int and its exact size; the
    // kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks UDP socket `fd` for its drop count with each datagram
/// (`SO_RXQ_OVFL`, [`Coalesced::drops`]) and, with `runs`, lets it read
/// runs of datagrams at once (`UDP_GRO`): what the kernel coalesced on the
/// way in (a sender's `UDP_SEGMENT` write on this host, a NIC's GRO) stays
/// one buffer, read by [`recv_coalesced`]. Either may fail alone.
pub fn set_receive_options(fd: BorrowedFd, runs: bool) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let ovfl = setsockopt(&fd, sockopt::RxqOvfl, &1);
    if runs {
        setsockopt(&fd, sockopt::UdpGroSegment, &true)?;
    }
    ovfl.map_err(io::Error::from)
}

/// Whether this kernel's TAPs take UDP super-frames (`GSO_UDP_L4` in a
/// written frame's virtio-net header: Linux 6.2, with `TUN_F_USO4`; an
/// older one refuses the write). Read once from
/// `/proc/sys/kernel/osrelease`; unreadable counts as no.
pub fn taps_take_uso() -> bool {
    static YES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *YES.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .is_ok_and(|r| release_at_least(&r, (6, 2)))
    })
}

/// `release` (`uname -r`: "6.1.0-18-amd64", "6.18.44-fc") is `want`
/// (major, minor) or later.
fn release_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(a), Some(b)) => (a, b) >= want,
        _ => false,
    }
}

/// What one [`recv_coalesced`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesced {
    /// Bytes in the buffer.
    pub len: usize,
    /// The sender (also given for a connected socket).
    pub from: Option<std::net::SocketAddr>,
    /// With `UDP_GRO`: the datagrams were each this long (the last may be
    /// shorter). `None`: one datagram.
    pub segment: Option<usize>,
    /// The buffer was too short and the rest is lost.
    pub truncated: bool,
    /// With `SO_RXQ_OVFL`: how many datagrams the kernel had dropped at
    /// this socket (its receive buffer full) when this one was queued, in
    /// all since the socket was made (wrapping); `None` while none were.
    pub drops: Option<u32>,
}

/// The drops a socket's count `now` ([`Coalesced::drops`]) adds to the
/// count `last` seen before (which it becomes).
pub fn new_drops(last: &mut u32, now: Option<u32>) -> u32 {
    let Some(now) = now else { return 0 };
    let n = now.wrapping_sub(*last);
    *last = now;
    n
}

/// The room [`recv_coalesced`] needs for its control message; make it
/// once.
pub fn coalesced_space() -> Vec<u8> {
    nix::cmsg_space!(libc::c_int, u32)
}

/// Reads one datagram, or with [`set_receive_options`] a run of them, from
/// datagram socket `fd` into `buf`, without blocking (`WouldBlock` when
/// none is queued); `space` from [`coalesced_space`].
pub fn recv_coalesced(fd: BorrowedFd, buf: &mut [u8], space: &mut [u8]) -> io::Result<Coalesced> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let mut iov = [io::IoSliceMut::new(buf)];
    let m = recvmsg::<SockaddrStorage>(
        fd.as_raw_fd(),
        &mut iov,
        Some(space),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let (mut segment, mut drops) = (None, None);
    if let Ok(cmsgs) = m.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::UdpGroSegments(s) => {
                    segment = usize::try_from(s).ok().filter(|&s| s > 0)
                }
                ControlMessageOwned::RxqOvfl(n) => drops = Some(n),
                _ => {}
            }
        }
    }
    let from = m.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|v| std::net::SocketAddr::V4(SocketAddrV4::new(v.ip(), v.port())))
            .or_else(|| {
                a.as_sockaddr_in6().map(|v| {
                    std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
                        v.ip(),
                        v.port(),
                        v.flowinfo(),
                        v.scope_id(),
                    ))
                })
            })
    });
    Ok(Coalesced {
        len: m.bytes,
        from,
        segment,
        truncated: m.flags.contains(MsgFlags::MSG_TRUNC),
        drops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        for (r, yes) in [
            ("6.1.0-18-amd64", false),
            ("6.2.0", true),
            ("6.18.44-fc-v1272\n", true),
            ("5.15.0-91-generic", false),
            ("7.0", true),
            ("6", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(release_at_least(r, (6, 2)), yes, "{r:?}");
        }
    }

    /// A socket whose buffer overflowed says how many datagrams it lost
    /// with the next one it reads, and the edge counts each loss once.
    #[test]
    fn a_full_socket_counts_what_it_dropped() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_receive_options(rx.as_fd(), false).unwrap();
        // The smallest buffer the kernel allows: a few datagrams.
        nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::RcvBuf, &1).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let mut space = coalesced_space();
        let mut buf = vec![0u8; 65536];
        tx.send(&[1; 1000]).unwrap();
        let r = recv_coalesced(rx.as_fd(), &mut buf, &mut space).unwrap();
        assert_eq!((r.len, r.drops), (1000, None));
        for _ in 0..200 {
            tx.send(&[2; 1000]).unwrap();
        }
        let mut last = 0;
        let mut read = 0;
        let mut lost = 0;
        while let Ok(r) = recv_coalesced(rx.as_fd(), &mut buf, &mut space) {
            read += 1;
            lost += new_drops(&mut last, r.drops);
        }
        assert!(read > 0 && read < 200, "read {read}");
        // Drops after the last datagram queued are told with a later one.
        tx.send(&[3; 1000]).unwrap();
        let r = recv_coalesced(rx.as_fd(), &mut buf, &mut space).unwrap();
        lost += new_drops(&mut last, r.drops);
        assert_eq!(read + lost, 200, "read {read}, lost {lost}");
        let mut w = u32::MAX - 1;
        assert_eq!(new_drops(&mut w, Some(3)), 5);
        assert_eq!(new_drops(&mut w, None), 0);
        assert_eq!(w, 3);
    }

    /// A `UDP_SEGMENT` write on loopback reaches a `UDP_GRO` socket as
    /// one read naming the segment size; a plain socket reads it datagram
    /// by datagram; a short buffer says it was cut.
    #[test]
    fn coalesced_reads_on_loopback() {
        let gro = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_receive_options(gro.as_fd(), true).unwrap();
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let data: Vec<u8> = (0..3500u32).map(|i| (i * 7) as u8).collect();
        let mut space = coalesced_space();
        let mut buf = vec![0u8; 65536];
        for rx in [&gro, &plain] {
            let to = rx.local_addr().unwrap();
            assert_eq!(
                send_segmented(tx.as_fd(), &data, Some(to), 1000).unwrap(),
                3500
            );
        }
        let r = recv_coalesced(gro.as_fd(), &mut buf, &mut space).unwrap();
        assert_eq!(
            r,
            Coalesced {
                len: 3500,
                from: Some(tx.local_addr().unwrap()),
                segment: Some(1000),
                truncated: false,
                drops: None,
            }
        );
        assert_eq!(&buf[..3500], &data[..]);
        let mut got = Vec::new();
        for _ in 0..4 {
            let r = recv_coalesced(plain.as_fd(), &mut buf, &mut space).unwrap();
            assert_eq!((r.segment, r.truncated), (None, false));
            got.extend_from_slice(&buf[..r.len]);
        }
        assert_eq!(got, data);
        let e = recv_coalesced(plain.as_fd(), &mut buf, &mut space).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // Cut short: the rest of the run is gone, and it says so.
        send_segmented(tx.as_fd(), &data, Some(gro.local_addr().unwrap()), 1000).unwrap();
        let r = recv_coalesced(gro.as_fd(), &mut buf[..2000], &mut space).unwrap();
        assert_eq!((r.len, r.truncated), (2000, true));
        let e = recv_coalesced(gro.as_fd(), &mut buf, &mut space).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn batch_round_trip_on_loopback() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = match b.local_addr().unwrap() {
            std::net::SocketAddr::V4(v) => v,
            _ => unreachable!(),
        };
        let mut tx = Batch::new(4);
        for k in 0..3u8 {
            let s = tx.next_slot().unwrap();
            s[..3].copy_from_slice(&[k, k, k]);
            tx.push(0..3 + usize::from(k), to);
        }
        let mut sent = Vec::new();
        tx.send(a.as_fd(), |r| sent.push(r.unwrap()));
        assert_eq!(sent, vec![3, 4, 5]);
        let mut rx = Batch::new(8);
        let mut got = 0;
        for _ in 0..100 {
            got += rx.recv(b.as_fd()).unwrap();
            if got == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 3);
        let (from, d) = rx.get(0);
        assert_eq!(std::net::SocketAddr::V4(from), a.local_addr().unwrap());
        assert_eq!(&d[..3], &[0, 0, 0]);
        assert!(!rx.truncated(0));
        assert_eq!(rx.recv(b.as_fd()).unwrap(), 0);
    }

    #[test]
    fn send_segmented_sends_its_datagrams() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let data: Vec<u8> = (0..2500).map(|i| i as u8).collect();
        let to = rx.local_addr().unwrap();
        let fd = std::os::fd::AsFd::as_fd(&tx);
        assert_eq!(send_segmented(fd, &data, Some(to), 1000).unwrap(), 2500);
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        for _ in 0..3 {
            let n = rx.recv(&mut b).unwrap();
            got.push(b[..n].to_vec());
        }
        assert_eq!(got, [&data[..1000], &data[1000..2000], &data[2000..]]);
        // Connected, no address; and over IPv6.
        tx.connect(to).unwrap();
        assert_eq!(send_segmented(fd, &data[..2000], None, 1000).unwrap(), 2000);
        assert_eq!(rx.recv(&mut b).unwrap(), 1000);
        let rx6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let tx6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let to6 = rx6.local_addr().unwrap();
        let fd6 = std::os::fd::AsFd::as_fd(&tx6);
        assert_eq!(send_segmented(fd6, &data, Some(to6), 1200).unwrap(), 2500);
        rx6.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        assert_eq!(rx6.recv(&mut b).unwrap(), 1200);
    }

    #[test]
    fn udp_gso_sends_the_same_datagrams() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let v4 = |s: &std::net::UdpSocket| match s.local_addr().unwrap() {
            std::net::SocketAddr::V4(v) => v,
            _ => unreachable!(),
        };
        // Equal sizes then a short one to b (one message), one to c, then
        // b again.
        let plan: Vec<(usize, SocketAddrV4)> = vec![
            (1000, v4(&b)),
            (1000, v4(&b)),
            (1000, v4(&b)),
            (400, v4(&b)),
            (1000, v4(&c)),
            (1000, v4(&b)),
        ];
        let mut tx = Batch::new(8);
        tx.use_udp_gso(true);
        for (k, &(len, to)) in plan.iter().enumerate() {
            let s = tx.next_slot().unwrap();
            s[..len].fill(k as u8);
            tx.push(0..len, to);
        }
        let mut sent = Vec::new();
        tx.send(a.as_fd(), |r| sent.push(r.unwrap()));
        assert_eq!(sent, plan.iter().map(|p| p.0).collect::<Vec<_>>());
        assert!(tx.gso, "the kernel took UDP_SEGMENT");
        let mut got = Vec::new();
        let mut rx = Batch::new(8);
        for sock in [&b, &c] {
            for _ in 0..100 {
                let n = rx.recv(sock.as_fd()).unwrap();
                for i in 0..n {
                    let d = rx.get(i).1;
                    got.push((d.len(), d[0], d.iter().all(|&x| x == d[0])));
                }
                if got.len() == 5 && std::ptr::eq(sock, &b) || got.len() == 6 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        assert_eq!(
            got,
            vec![
                (1000, 0, true),
                (1000, 1, true),
                (1000, 2, true),
                (400, 3, true),
                (1000, 5, true),
                (1000, 4, true),
            ]
        );
    }
}
