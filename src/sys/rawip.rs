//! Raw IP sockets bound to a parent interface: the router port of an
//! ipvlan `l3` network (`tapnet_switch::segment`). The switch hands it
//! IPv4 packets its endpoints send beyond the network; the daemon's
//! network namespace routes them out of the parent, as the kernel's own
//! ipvlan l3 routes a slave's packets through the master's tables.
//!
//! `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)` (`IP_HDRINCL` implied; IPv6:
//! `AF_INET6`, the header included likewise): the
//! packet is sent with the container's own header (source address, TTL,
//! identification, DF); the kernel only fills in the header checksum. It
//! looks the route up restricted to the parent (`SO_BINDTODEVICE`) and
//! resolves the next hop's MAC itself. Such a socket never receives. Send
//! failures are returned as errors for the caller to count: a packet
//! larger than the parent's MTU (`EMSGSIZE`: never fragmented here), no
//! route, a full send buffer (`EAGAIN`/`ENOBUFS`).
//!
//! Needs CAP_NET_RAW in the parent's network namespace, as the AF_PACKET
//! sockets do ([`PacketError::Permission`]). Safe code only (socket2).

use super::packet::PacketError;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, OwnedFd};

/// `IPPROTO_RAW`: send-only, the caller writes the IP header.
const IPPROTO_RAW: i32 = 255;

/// Send buffer asked for (the kernel caps it at `wmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Opens `queues` non-blocking raw IPv4 (IPv6 with `v6`) sockets bound to
/// interface `name` (in the calling thread's network namespace), one per
/// worker.
pub fn open(name: &str, queues: usize, v6: bool) -> Result<Vec<OwnedFd>, PacketError> {
    if queues == 0 {
        return Err(PacketError::NoQueues);
    }
    super::packet::ifindex(name)?;
    (0..queues).map(|_| open_one(name, v6)).collect()
}

fn open_one(name: &str, v6: bool) -> Result<OwnedFd, PacketError> {
    let s = Socket::new(
        if v6 { Domain::IPV6 } else { Domain::IPV4 },
        Type::RAW.cloexec(),
        Some(Protocol::from(IPPROTO_RAW)),
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => PacketError::Permission(name.to_string()),
        _ => PacketError::Socket {
            name: name.to_string(),
            source: e,
        },
    })?;
    let opt = |what: &'static str, r: io::Result<()>| {
        r.map_err(|source| PacketError::SockOpt {
            what,
            name: name.to_string(),
            source,
        })
    };
    opt("SO_BINDTODEVICE", s.bind_device(Some(name.as_bytes())))?;
    opt("O_NONBLOCK", s.set_nonblocking(true))?;
    // Best effort: a smaller buffer only means earlier `tx_full` drops.
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    Ok(s.into())
}

/// Sends one IPv4 packet (`packet`: header and payload, as it will be on
/// the wire) towards `dst` (its destination address).
#[inline]
pub fn send_v4(fd: &impl AsFd, packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    SockRef::from(fd).send_to(packet, &to).map(|_| ())
}

/// Sends one IPv6 packet (header and payload) towards `dst`.
#[inline]
pub fn send_v6(fd: &impl AsFd, packet: &[u8], dst: Ipv6Addr) -> io::Result<()> {
    let to = SockAddr::from(SocketAddrV6::new(dst, 0, 0, 0));
    SockRef::from(fd).send_to(packet, &to).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface() {
        assert!(matches!(
            open("tapnet-no-such-if0", 1, false),
            Err(PacketError::NoInterface(_))
        ));
        assert!(matches!(open("lo", 0, true), Err(PacketError::NoQueues)));
    }
}
