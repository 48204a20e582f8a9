//! AF_PACKET sockets on a parent interface: the switch's port onto a
//! physical segment (macvlan and ipvlan networks).
//!
//! Each socket is a drop-in for a TAP queue: `read` gives, `write(v)`
//! takes, a [`VNET_HDR_LEN`]-byte virtio-net header then the frame
//! (`PACKET_VNET_HDR` with `PACKET_VNET_HDR_SZ` 12, Linux 6.2+), so
//! partially checksummed and GSO super-frames cross between the parent and
//! the containers' TAPs untouched, as between two TAPs.
//!
//! One socket per worker, all in one `PACKET_FANOUT_HASH` group (a flow
//! always reaches the same worker); the parent is made promiscuous
//! (`PACKET_ADD_MEMBERSHIP`, `PACKET_MR_PROMISC`: the containers' MACs are
//! not the parent's); the socket never sees its own (or any) outgoing
//! frames (`PACKET_IGNORE_OUTGOING`).
//!
//! VLANs: the kernel strips an 802.1Q tag before AF_PACKET sees a frame
//! (the tag travels as metadata), so the socket's classic BPF filter
//! accepts only frames whose metadata holds the network's VLAN id (or, for
//! an untagged network, frames without a tag): the tag is popped and
//! checked before the frame is read. The tag is pushed again on egress by
//! the dataplane's transmit stage ([`vlan_tag`]).
//!
//! Needs CAP_NET_RAW in the user namespace that owns the parent's network
//! namespace ([`PacketError::Permission`]).

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Length of the virtio-net header in front of every frame (as on TAPs).
pub const VNET_HDR_LEN: usize = 12;

const ETH_P_ALL: u16 = 0x0003;
const SOL_PACKET: libc::c_int = 263;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_VNET_HDR_SZ: libc::c_int = 24;
const PACKET_FANOUT_HASH: u32 = 0;
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;

/// Socket buffers asked for (the kernel caps them at `rmem_max`/`wmem_max`).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// `struct packet_mreq`.
#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [u8; 8],
}

/// Errors of opening a parent's sockets; the message names the step.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The interface does not exist in the daemon's network namespace.
    #[error("interface {0} was not found in the daemon's network namespace")]
    NoInterface(String),
    /// No CAP_NET_RAW over the parent's network namespace.
    #[error("an AF_PACKET socket on {0} needs CAP_NET_RAW in its network namespace (run the daemon as root, or use a parent inside the daemon's own user and network namespace)")]
    Permission(String),
    /// socket(AF_PACKET) failed otherwise.
    #[error("socket(AF_PACKET) for {name}: {source}")]
    Socket {
        name: String,
        #[source]
        source: io::Error,
    },
    /// A socket option was refused.
    #[error("{what} on the AF_PACKET socket of {name}: {source}")]
    SockOpt {
        what: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    /// bind to the interface failed.
    #[error("bind an AF_PACKET socket to {name}: {source}")]
    Bind {
        name: String,
        #[source]
        source: io::Error,
    },
    /// Zero sockets were asked for.
    #[error("at least one socket is needed")]
    NoQueues,
}

/// The sockets of one parent (one per worker).
#[derive(Debug)]
pub struct Parent {
    pub ifindex: u32,
    pub queues: Vec<OwnedFd>,
}

/// The index of interface `name` in the calling thread's network
/// namespace.
pub fn ifindex(name: &str) -> Result<u32, PacketError> {
    let c = CString::new(name).map_err(|_| PacketError::NoInterface(name.to_string()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(PacketError::NoInterface(name.to_string()));
    }
    Ok(i)
}

/// The MTU of interface `name` (SIOCGIFMTU) in the calling thread's
/// network namespace.
pub fn mtu(name: &str) -> Result<u32, PacketError> {
    let (fd, mut req) = ifreq(name)?;
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; SIOCGIFMTU
    // writes only into it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if r < 0 {
        return Err(PacketError::NoInterface(name.to_string()));
    }
    // SAFETY: SIOCGIFMTU filled the union's `ifru_mtu` member.
    let m = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(m.max(0) as u32)
}

/// The MAC address of interface `name` (SIOCGIFHWADDR) in the calling
/// thread's network namespace.
pub fn hwaddr(name: &str) -> Result<[u8; 6], PacketError> {
    let (fd, mut req) = ifreq(name)?;
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name (checked
    // length, zeroed rest); SIOCGIFHWADDR writes only into it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if r < 0 {
        return Err(PacketError::NoInterface(name.to_string()));
    }
    // SAFETY: SIOCGIFHWADDR filled the union's `ifru_hwaddr` member.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// A datagram socket for interface ioctls and an `ifreq` naming `name`.
fn ifreq(name: &str) -> Result<(OwnedFd, libc::ifreq), PacketError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(PacketError::NoInterface(name.to_string()));
    }
    // SAFETY: plain socket(2) call; the result is checked below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(PacketError::Socket {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a fresh socket this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok((fd, req))
}

/// Opens `queues` sockets on interface `name` (in the calling thread's
/// network namespace) that receive only frames of VLAN `vlan` (untagged
/// frames when `None`), with the tag already removed.
pub fn open(name: &str, vlan: Option<u16>, queues: usize) -> Result<Parent, PacketError> {
    if queues == 0 {
        return Err(PacketError::NoQueues);
    }
    let ifindex = ifindex(name)?;
    let mut fds = Vec::with_capacity(queues);
    let mut group = None;
    for _ in 0..queues {
        let fd = open_one(name, ifindex, vlan)?;
        if queues > 1 {
            group = Some(join_fanout(&fd, name, group)?);
        }
        fds.push(fd);
    }
    Ok(Parent {
        ifindex,
        queues: fds,
    })
}

fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: &T,
    what: &'static str,
    name: &str,
) -> Result<(), PacketError> {
    // SAFETY: `val` points to a live `T` of `size_of::<T>()` bytes for the
    // duration of the call; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (val as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(PacketError::SockOpt {
            what,
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn open_one(name: &str, ifindex: u32, vlan: Option<u16>) -> Result<OwnedFd, PacketError> {
    // Protocol 0: the socket receives nothing until bound, so no frame
    // gets in before the filter is attached.
    // SAFETY: plain socket(2) call; the result is checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => PacketError::Permission(name.to_string()),
            _ => PacketError::Socket {
                name: name.to_string(),
                source: e,
            },
        });
    }
    // SAFETY: `raw` is a fresh socket this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    setsockopt(
        &fd,
        SOL_PACKET,
        PACKET_VNET_HDR,
        &one,
        "PACKET_VNET_HDR",
        name,
    )?;
    let sz = VNET_HDR_LEN as libc::c_int;
    setsockopt(
        &fd,
        SOL_PACKET,
        PACKET_VNET_HDR_SZ,
        &sz,
        "PACKET_VNET_HDR_SZ (Linux 6.2+)",
        name,
    )?;
    setsockopt(
        &fd,
        SOL_PACKET,
        PACKET_IGNORE_OUTGOING,
        &one,
        "PACKET_IGNORE_OUTGOING",
        name,
    )?;
    let buf = SOCKET_BUFFER;
    setsockopt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        &buf,
        "SO_RCVBUF",
        name,
    )?;
    setsockopt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_SNDBUF,
        &buf,
        "SO_SNDBUF",
        name,
    )?;
    let mut prog = vlan_filter(vlan);
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_mut_ptr(),
    };
    setsockopt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_FILTER,
        &fprog,
        "SO_ATTACH_FILTER",
        name,
    )?;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: `sll` is a valid sockaddr_ll of the length passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(PacketError::Bind {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    let mreq = PacketMreq {
        mr_ifindex: ifindex as libc::c_int,
        mr_type: PACKET_MR_PROMISC,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    setsockopt(
        &fd,
        SOL_PACKET,
        PACKET_ADD_MEMBERSHIP,
        &mreq,
        "PACKET_ADD_MEMBERSHIP (promiscuous)",
        name,
    )?;
    Ok(fd)
}

/// Joins `fd` to the fanout group `group`, or makes a new group with a
/// kernel-chosen unique id (returned).
fn join_fanout(fd: &OwnedFd, name: &str, group: Option<u16>) -> Result<u16, PacketError> {
    let arg: u32 = match group {
        Some(id) => u32::from(id) | (PACKET_FANOUT_HASH << 16),
        None => (PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_UNIQUEID) << 16,
    };
    setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, "PACKET_FANOUT", name)?;
    if let Some(id) = group {
        return Ok(id);
    }
    let mut val: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: `val` and `len` are live and `len` is `val`'s size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_FANOUT,
            (&mut val as *mut u32).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(PacketError::SockOpt {
            what: "getsockopt PACKET_FANOUT",
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok((val & 0xffff) as u16)
}

/// The classic BPF program that accepts frames of VLAN `vlan` only (frames
/// without a tag when `None`), reading the kernel's VLAN metadata.
fn vlan_filter(vlan: Option<u16>) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AD_OFF: u32 = (-0x1000i32) as u32; // SKF_AD_OFF
    const AD_VLAN_TAG: u32 = 44;
    const AD_VLAN_TAG_PRESENT: u32 = 48;
    const ACCEPT: u32 = 0x40000;
    let i = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    match vlan {
        None => vec![
            i(LD_W_ABS, 0, 0, AD_OFF.wrapping_add(AD_VLAN_TAG_PRESENT)),
            i(JEQ_K, 0, 1, 0),
            i(RET_K, 0, 0, ACCEPT),
            i(RET_K, 0, 0, 0),
        ],
        Some(vid) => vec![
            i(LD_W_ABS, 0, 0, AD_OFF.wrapping_add(AD_VLAN_TAG_PRESENT)),
            i(JEQ_K, 4, 0, 0),
            i(LD_W_ABS, 0, 0, AD_OFF.wrapping_add(AD_VLAN_TAG)),
            i(AND_K, 0, 0, 0x0fff),
            i(JEQ_K, 0, 1, u32::from(vid)),
            i(RET_K, 0, 0, ACCEPT),
            i(RET_K, 0, 0, 0),
        ],
    }
}

/// The 4 bytes of an 802.1Q tag (TPID 0x8100, priority 0) for `vid`,
/// inserted after the MAC addresses on egress.
pub fn vlan_tag(vid: u16) -> [u8; 4] {
    let t = (vid & 0x0fff).to_be_bytes();
    [0x81, 0x00, t[0], t[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_jump_inside() {
        for f in [vlan_filter(None), vlan_filter(Some(10))] {
            for (n, ins) in f.iter().enumerate().filter(|(_, i)| i.code == 0x15) {
                assert!(n + 1 + usize::from(ins.jt) < f.len());
                assert!(n + 1 + usize::from(ins.jf) < f.len());
            }
            assert_eq!(f.last().unwrap().code, 0x06);
        }
        assert_eq!(vlan_tag(10), [0x81, 0, 0, 10]);
        assert_eq!(vlan_tag(4094), [0x81, 0, 0x0f, 0xfe]);
    }

    #[test]
    fn missing_interface() {
        assert!(matches!(
            open("tapnet-no-such-if0", None, 1),
            Err(PacketError::NoInterface(_))
        ));
    }
}
