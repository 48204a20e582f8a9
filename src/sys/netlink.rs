//! A small synchronous rtnetlink client for the calling thread's network
//! namespace: set a link's MAC, MTU and state, add an IPv4 address, add a
//! default route, delete a link, read a link's drop counter.
//!
//! Hand-rolled on purpose: the helpers that use it are short-lived
//! single-threaded processes doing five requests, so an async stack
//! (`rtnetlink` + tokio) would only add a runtime and dependencies. Every
//! request asks for an ACK and the kernel's error is returned as an
//! [`io::Error`] with its errno.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockProtocol, SockType};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWQDISC: u16 = 36;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_TXQLEN: u16 = 13;
const IFLA_STATS64: u16 = 23;
/// Byte offset of `tx_dropped` in `struct rtnl_link_stats64` (the eighth
/// `__u64`, after rx/tx packets, bytes, errors and `rx_dropped`).
const STATS64_TX_DROPPED: usize = 7 * 8;
/// `struct ifinfomsg`'s length: the attributes of a link message follow.
const IFINFOMSG_LEN: usize = 16;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
const TCA_KIND: u16 = 1;
const TC_H_ROOT: u32 = 0xFFFF_FFFF;
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
/// `ifa_flags`: no duplicate address detection.
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;

const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_HOST: u8 = 254;
const RTN_UNICAST: u8 = 1;

const IFF_UP: u32 = libc::IFF_UP as u32;

/// Errors of netlink requests; the message names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening the NETLINK_ROUTE socket failed.
    #[error("open netlink socket: {0}")]
    Open(#[source] io::Error),
    /// No interface of that name.
    #[error("no interface {0}")]
    NoSuchLink(String),
    /// The kernel refused a request (or the socket failed).
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl NetlinkError {
    /// The errno behind this failure, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            NetlinkError::Open(e) | NetlinkError::Request { source: e, .. } => e.raw_os_error(),
            NetlinkError::NoSuchLink(_) => Some(libc::ENODEV),
        }
    }
}

/// A NETLINK_ROUTE socket bound to the caller's network namespace (at
/// [`Netlink::open`] time).
pub struct Netlink {
    sock: File,
    seq: u32,
}

/// The index of interface `name` in the calling thread's network namespace,
/// or `None` if there is none.
pub fn link_index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

impl Netlink {
    pub fn open() -> Result<Netlink, NetlinkError> {
        let fd: OwnedFd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|e| NetlinkError::Open(io::Error::from_raw_os_error(e as i32)))?;
        Ok(Netlink {
            sock: File::from(fd),
            seq: 0,
        })
    }

    /// The index of `name`, or [`NetlinkError::NoSuchLink`].
    pub fn index(&self, name: &str) -> Result<u32, NetlinkError> {
        link_index(name).ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))
    }

    /// Sets MAC, MTU and up/down state of link `index` (each when given).
    pub fn set_link(
        &mut self,
        index: u32,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
        up: Option<bool>,
    ) -> Result<(), NetlinkError> {
        let mut body = ifinfomsg(
            index,
            up.map_or(0, |u| if u { IFF_UP } else { 0 }),
            up.map_or(0, |_| IFF_UP),
        );
        if let Some(mac) = mac {
            attr(&mut body, IFLA_ADDRESS, &mac);
        }
        if let Some(mtu) = mtu {
            attr(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(RTM_NEWLINK, 0, &body, "set link")
    }

    /// Turns ARP (and IPv6 neighbour discovery) off on link `index`
    /// (`IFF_NOARP`): the link addresses every frame to its own MAC.
    pub fn set_noarp(&mut self, index: u32) -> Result<(), NetlinkError> {
        let noarp = libc::IFF_NOARP as u32;
        let body = ifinfomsg(index, noarp, noarp);
        self.request(RTM_NEWLINK, 0, &body, "set link noarp")
    }

    /// Makes the kernel generate no IPv6 link-local address for link
    /// `index` (`IFLA_INET6_ADDR_GEN_MODE` none; before the link goes up):
    /// the caller adds its own.
    pub fn set_addr_gen_mode_none(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut inet6 = Vec::new();
        attr(
            &mut inet6,
            IFLA_INET6_ADDR_GEN_MODE,
            &[IN6_ADDR_GEN_MODE_NONE],
        );
        let mut spec = Vec::new();
        attr(&mut spec, libc::AF_INET6 as u16, &inet6);
        let mut body = ifinfomsg(index, 0, 0);
        attr(&mut body, IFLA_AF_SPEC, &spec);
        self.request(RTM_NEWLINK, 0, &body, "set addr_gen_mode none")
    }

    /// Sets the transmit queue length of link `index` (for a TAP: the ring
    /// of frames waiting for the reader, per queue).
    pub fn set_txqlen(&mut self, index: u32, len: u32) -> Result<(), NetlinkError> {
        let mut body = ifinfomsg(index, 0, 0);
        attr(&mut body, IFLA_TXQLEN, &len.to_ne_bytes());
        self.request(RTM_NEWLINK, 0, &body, "set txqueuelen")
    }

    /// Makes `noqueue` the root queueing discipline of link `index` (before
    /// it goes up, so that the kernel attaches no default one): its frames
    /// go straight to the driver, as on a veth.
    pub fn set_noqueue(&mut self, index: u32) -> Result<(), NetlinkError> {
        // struct tcmsg: family, padding, ifindex, handle, parent, info.
        let mut body = Vec::with_capacity(32);
        body.push(libc::AF_UNSPEC as u8);
        body.extend_from_slice(&[0; 3]);
        body.extend_from_slice(&(index as i32).to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(&TC_H_ROOT.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut body, TCA_KIND, b"noqueue\0");
        self.request(
            RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_REPLACE,
            &body,
            "set qdisc noqueue",
        )
    }

    /// Adds `addr/prefix` (with its broadcast address) to link `index`.
    pub fn add_addr_v4(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut body = Vec::with_capacity(32);
        body.push(libc::AF_INET as u8);
        body.push(prefix);
        body.push(0); // flags
        body.push(if addr.is_loopback() {
            RT_SCOPE_HOST
        } else {
            RT_SCOPE_UNIVERSE
        });
        body.extend_from_slice(&index.to_ne_bytes());
        attr(&mut body, IFA_LOCAL, &addr.octets());
        attr(&mut body, IFA_ADDRESS, &addr.octets());
        if prefix < 31 {
            let mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            let brd = Ipv4Addr::from(u32::from(addr) | mask);
            attr(&mut body, IFA_BROADCAST, &brd.octets());
        }
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body, "add address")
    }

    /// Adds `addr/prefix` to link `index` without duplicate address
    /// detection (`IFA_F_NODAD`: the address is usable at once; the
    /// daemon's IPAM already made it unique on the network).
    pub fn add_addr_v6(
        &mut self,
        index: u32,
        addr: Ipv6Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut body = Vec::with_capacity(48);
        body.push(libc::AF_INET6 as u8);
        body.push(prefix);
        body.push(IFA_F_NODAD);
        body.push(RT_SCOPE_UNIVERSE);
        body.extend_from_slice(&index.to_ne_bytes());
        attr(&mut body, IFA_ADDRESS, &addr.octets());
        self.request(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            &body,
            "add IPv6 address",
        )
    }

    /// Adds a default route of `gateway`'s family via `gateway` out of
    /// link `index`.
    pub fn add_default_route(&mut self, index: u32, gateway: IpAddr) -> Result<(), NetlinkError> {
        let (family, gw) = match gateway {
            IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec()),
        };
        let mut body = rtmsg(family, 0, RT_SCOPE_UNIVERSE);
        attr(&mut body, RTA_GATEWAY, &gw);
        attr(&mut body, RTA_OIF, &index.to_ne_bytes());
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &body,
            "add default route",
        )
    }

    /// Adds a link-scope host route to `dst` out of link `index` with
    /// priority `metric` (`ip route add DST/32 dev LINK scope link metric
    /// METRIC`): an on-link address outside the link's subnet, such as the
    /// embedded DNS's service address on macvlan/ipvlan networks. Routes to
    /// one address out of several links coexist when their metrics differ;
    /// the lowest wins, and the next takes over when its link goes.
    pub fn add_link_route(
        &mut self,
        index: u32,
        dst: Ipv4Addr,
        metric: u32,
    ) -> Result<(), NetlinkError> {
        let mut body = rtmsg(libc::AF_INET, 32, RT_SCOPE_LINK);
        attr(&mut body, RTA_DST, &dst.octets());
        attr(&mut body, RTA_OIF, &index.to_ne_bytes());
        attr(&mut body, RTA_PRIORITY, &metric.to_ne_bytes());
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &body,
            "add link route",
        )
    }

    /// Adds a default route out of link `index` without a gateway
    /// (`default dev IFACE`), IPv6 when `v6`.
    pub fn add_default_dev_route(&mut self, index: u32, v6: bool) -> Result<(), NetlinkError> {
        let (family, scope) = if v6 {
            (libc::AF_INET6, RT_SCOPE_UNIVERSE)
        } else {
            (libc::AF_INET, RT_SCOPE_LINK)
        };
        let mut body = rtmsg(family, 0, scope);
        attr(&mut body, RTA_OIF, &index.to_ne_bytes());
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &body,
            "add default device route",
        )
    }

    /// Deletes link `index`.
    pub fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let body = ifinfomsg(index, 0, 0);
        self.request(RTM_DELLINK, 0, &body, "delete link")
    }

    /// The `tx_dropped` counter of link `name` (`IFLA_STATS64`): for a
    /// TAP, the frames its namespace sent that the kernel dropped because
    /// the queue's ring was full (the reader had not taken them).
    pub fn tx_dropped(&mut self, name: &str) -> Result<u64, NetlinkError> {
        let err = |source: io::Error| NetlinkError::Request {
            what: format!("read the counters of {name}"),
            source,
        };
        let mut body = ifinfomsg(0, 0, 0);
        let mut z = name.as_bytes().to_vec();
        z.push(0);
        attr(&mut body, IFLA_IFNAME, &z);
        let reply = self.exchange(RTM_GETLINK, 0, &body).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENODEV) {
                NetlinkError::NoSuchLink(name.to_string())
            } else {
                err(e)
            }
        })?;
        let stats = reply
            .get(IFINFOMSG_LEN..)
            .and_then(|attrs| find_attr(attrs, IFLA_STATS64))
            .and_then(|s| s.get(STATS64_TX_DROPPED..STATS64_TX_DROPPED + 8))
            .ok_or_else(|| {
                err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "link reply without IFLA_STATS64",
                ))
            })?;
        Ok(u64::from_ne_bytes(stats.try_into().expect("8 bytes")))
    }

    /// Sends one request and waits for its ACK.
    fn request(
        &mut self,
        ty: u16,
        flags: u16,
        body: &[u8],
        what: &str,
    ) -> Result<(), NetlinkError> {
        let err = |source: io::Error| NetlinkError::Request {
            what: what.to_string(),
            source,
        };
        let seq = self.send(ty, flags | NLM_F_ACK, body).map_err(err)?;
        let mut buf = vec![0u8; 16384];
        loop {
            let n = self.recv(&mut buf).map_err(err)?;
            if let Some(result) = find_ack(&buf[..n], seq) {
                return result.map_err(err);
            }
        }
    }

    /// Sends one `get` request (no ACK asked) and returns the payload of
    /// its answer, or the kernel's error.
    fn exchange(&mut self, ty: u16, flags: u16, body: &[u8]) -> io::Result<Vec<u8>> {
        let seq = self.send(ty, flags, body)?;
        // One link's message with every address family's counters is a
        // few KiB; the kernel truncates nothing below its own page-sized
        // skb when the buffer is this large.
        let mut buf = vec![0u8; 32768];
        loop {
            let n = self.recv(&mut buf)?;
            if let Some(result) = find_reply(&buf[..n], seq) {
                return result.map(<[u8]>::to_vec);
            }
        }
    }

    /// Writes one message of type `ty` (`NLM_F_REQUEST` added to `flags`)
    /// and returns its sequence number.
    fn send(&mut self, ty: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = NLMSG_HDRLEN + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        msg.extend_from_slice(body);
        self.sock.write_all(&msg)?;
        Ok(seq)
    }

    /// Reads one datagram of replies into `buf`; its length.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.sock.read(buf)? {
            0 => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            n => Ok(n),
        }
    }
}

/// The messages in `buf`, as (type, sequence number, payload); stops at
/// the first malformed one, which it yields as an error.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = io::Result<(u16, u32, &[u8])>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed netlink reply",
            )));
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        Some(Ok((ty, seq, payload)))
    })
}

/// The errno an `NLMSG_ERROR` payload carries (zero: an ACK).
fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

/// The messages of request `seq` in `buf`, as (type, payload), and a
/// malformed message as an error.
fn answers(buf: &[u8], seq: u32) -> impl Iterator<Item = io::Result<(u16, &[u8])>> {
    messages(buf).filter_map(move |m| match m {
        Ok((ty, s, payload)) if s == seq => Some(Ok((ty, payload))),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    })
}

/// The kernel's error in an `NLMSG_ERROR` payload (`Ok` for an ACK).
fn errno_of(payload: &[u8]) -> io::Result<()> {
    match error_code(payload) {
        Some(0) => Ok(()),
        Some(code) => Err(io::Error::from_raw_os_error(-code)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink error message",
        )),
    }
}

/// Looks for the ACK/error of request `seq` among the messages in `buf`.
fn find_ack(buf: &[u8], seq: u32) -> Option<io::Result<()>> {
    answers(buf, seq).find_map(|m| match m {
        Ok((NLMSG_ERROR, payload)) => Some(errno_of(payload)),
        Ok((NLMSG_DONE, _)) => Some(Ok(())),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    })
}

/// Looks for the answer to `get` request `seq` in `buf`: its payload, or
/// the kernel's error.
fn find_reply(buf: &[u8], seq: u32) -> Option<io::Result<&[u8]>> {
    answers(buf, seq).next().map(|m| {
        let (ty, payload) = m?;
        match ty {
            NLMSG_ERROR => Err(errno_of(payload).err().unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "an ACK where an answer was due")
            })),
            NLMSG_DONE => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => Ok(payload),
        }
    })
}

/// The payload of the first attribute of type `ty` among `attrs` (the
/// nested flag and byte-order bits of the type ignored).
fn find_attr(mut attrs: &[u8], ty: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let t = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if t == ty {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// `struct ifinfomsg` for link `index`.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.push(libc::AF_UNSPEC as u8);
    body.push(0);
    body.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    body.extend_from_slice(&(index as i32).to_ne_bytes());
    body.extend_from_slice(&flags.to_ne_bytes());
    body.extend_from_slice(&change.to_ne_bytes());
    body
}

/// Appends one `struct rtattr` (padded to 4 bytes).
/// A route message's header (`struct rtmsg`: main table, boot protocol,
/// unicast, no flags) for `family`, a destination of `dst_len` bits and
/// `scope`; the attributes follow.
fn rtmsg(family: i32, dst_len: u8, scope: u8) -> Vec<u8> {
    let mut body = vec![
        family as u8,
        dst_len,
        0, // src_len
        0, // tos
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        scope,
        RTN_UNICAST,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    body
}

fn attr(body: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    body.extend_from_slice(&(len as u16).to_ne_bytes());
    body.extend_from_slice(&ty.to_ne_bytes());
    body.extend_from_slice(data);
    body.resize((body.len() + 3) & !3, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_is_padded() {
        let mut body = Vec::new();
        attr(&mut body, IFLA_ADDRESS, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(body.len(), 12);
        assert_eq!(&body[0..2], &10u16.to_ne_bytes());
        assert_eq!(&body[4..10], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&body[10..], &[0, 0]);
    }

    #[test]
    fn reply_and_attribute_parsing() {
        // An RTM_NEWLINK answer: ifinfomsg, IFLA_IFNAME, IFLA_STATS64.
        let mut body = ifinfomsg(3, 0, 0);
        attr(&mut body, IFLA_IFNAME, b"tap0\0");
        let mut stats = [0u8; 24 * 8];
        stats[STATS64_TX_DROPPED..STATS64_TX_DROPPED + 8].copy_from_slice(&42u64.to_ne_bytes());
        attr(&mut body, IFLA_STATS64, &stats);
        let mut msg = Vec::new();
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&9u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        assert!(find_reply(&msg, 8).is_none());
        let payload = find_reply(&msg, 9).expect("reply").expect("no error");
        let attrs = &payload[IFINFOMSG_LEN..];
        assert_eq!(find_attr(attrs, IFLA_IFNAME), Some(&b"tap0\0"[..]));
        let s = find_attr(attrs, IFLA_STATS64).expect("stats");
        assert_eq!(
            &s[STATS64_TX_DROPPED..STATS64_TX_DROPPED + 8],
            &42u64.to_ne_bytes()
        );
        assert_eq!(find_attr(attrs, IFLA_MTU), None);
        // An attribute claiming more than there is ends the search.
        assert_eq!(find_attr(&[200, 0, 3, 0, 1, 2], IFLA_IFNAME), None);
        // A message claiming more than there is: an error, not a hang.
        let mut bad = msg.clone();
        bad[0..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert!(find_reply(&bad, 9).expect("answer").is_err());
    }

    #[test]
    fn ack_parsing() {
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&7u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        msg.extend_from_slice(&[0u8; 16]);
        assert!(find_ack(&msg, 6).is_none());
        let err = find_ack(&msg, 7).expect("reply").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        assert!(find_ack(&msg[..10], 7).is_none());
    }

    #[test]
    fn configures_a_link_in_a_private_netns() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (CAP_NET_ADMIN) to make a private network namespace"
        );
        std::thread::spawn(|| {
            crate::sys::ns::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            let tap =
                crate::sys::tap::open_queues("tap%d", 1, crate::sys::tap::OpenMode::Create, true)
                    .expect("create tap");
            let mut nl = Netlink::open().expect("netlink");
            let lo = nl.index("lo").expect("lo");
            nl.set_link(lo, None, None, Some(true)).expect("lo up");
            let idx = nl.index(&tap.name).expect("tap index");
            nl.set_link(idx, Some([0x02, 0, 0, 0, 0, 0x42]), Some(1400), None)
                .expect("mac+mtu");
            nl.set_noqueue(idx).expect("qdisc noqueue");
            nl.add_addr_v4(idx, Ipv4Addr::new(10, 9, 0, 2), 24)
                .expect("addr");
            let again = nl
                .add_addr_v4(idx, Ipv4Addr::new(10, 9, 0, 2), 24)
                .unwrap_err();
            assert_eq!(again.raw_os_error(), Some(libc::EEXIST), "{again}");
            nl.set_link(idx, None, None, Some(true)).expect("up");
            // Still noqueue once up (no default qdiscs attached over it);
            // `tc` runs in this thread's namespace.
            let tc = std::process::Command::new("tc")
                .args(["qdisc", "show", "dev", &tap.name])
                .output()
                .expect("run tc (iproute2)");
            let shown = String::from_utf8_lossy(&tc.stdout);
            assert!(shown.starts_with("qdisc noqueue "), "{shown}");
            nl.add_addr_v6(idx, "2001:db8:9::2".parse().unwrap(), 64)
                .expect("IPv6 addr");
            nl.add_default_route(idx, Ipv4Addr::new(10, 9, 0, 1).into())
                .expect("route");
            nl.add_default_route(idx, "2001:db8:9::1".parse().unwrap())
                .expect("IPv6 route");
            let again = nl
                .add_default_route(idx, "2001:db8:9::1".parse().unwrap())
                .unwrap_err();
            assert_eq!(again.raw_os_error(), Some(libc::EEXIST), "{again}");
            let name = tap.name.clone();
            drop(tap);
            assert_eq!(link_index(&name), Some(idx), "persistent tap vanished");
            nl.del_link(idx).expect("delete");
            assert_eq!(link_index(&name), None, "tap still there");
            let err = nl.del_link(idx).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
            assert_eq!(nl.tx_dropped("lo").expect("lo's counters"), 0);
            let err = nl.tx_dropped(&name).unwrap_err();
            assert!(matches!(err, NetlinkError::NoSuchLink(_)), "{err}");
        })
        .join()
        .expect("test thread panicked");
    }
}
