//! TAP devices from `/dev/net/tun`.
//!
//! Every queue is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR |
//! IFF_MULTI_QUEUE`: opening the same name N times attaches N queues to one
//! interface. Each frame read from or written to a queue starts with a
//! [`VNET_HDR_LEN`]-byte virtio-net header (`virtio_net_hdr_v1`, i.e. with
//! `num_buffers`), and the device is told it may hand us (and take from us)
//! partially checksummed, TSO and — where the kernel has it — USO
//! super-frames.
//!
//! The device belongs to the network namespace of the *calling thread at
//! open time*: join the namespace first, then call [`open_queues`].

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Length of the virtio-net header in front of every frame on a queue:
/// `struct virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers), 12 bytes, set with
/// `TUNSETVNETHDRSZ`. Fields are little-endian (the TAP's default on
/// little-endian hosts).
pub const VNET_HDR_LEN: usize = 12;

/// Send buffer of each queue (`TUNSETSNDBUF`): "unlimited" like QEMU's
/// default, so that writes never block on socket accounting.
const SNDBUF: libc::c_int = libc::c_int::MAX;

/// Flags of every queue.
const QUEUE_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;

/// `IFF_TUN_EXCL`: fail with EBUSY when the name already exists.
const IFF_TUN_EXCL: libc::c_int = 0x8000;

/// Offloads always requested.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
/// UDP segmentation offloads, added when the kernel knows them (6.2+).
const OFFLOADS_USO: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// Errors of TAP setup; the message names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Couldn't open /dev/net/tun: {0}
    #[error("open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// The interface name is empty, too long or has a NUL byte.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// TUNSETIFF failed (attach/create the interface).
    #[error("TUNSETIFF {name}: {source}")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    /// TUNSETVNETHDRSZ failed.
    #[error("TUNSETVNETHDRSZ on {name}: {source}")]
    SetVnetHdrSize {
        name: String,
        #[source]
        source: io::Error,
    },
    /// TUNSETOFFLOAD failed.
    #[error("TUNSETOFFLOAD on {name}: {source}")]
    SetOffload {
        name: String,
        #[source]
        source: io::Error,
    },
    /// TUNSETSNDBUF failed.
    #[error("TUNSETSNDBUF on {name}: {source}")]
    SetSndbuf {
        name: String,
        #[source]
        source: io::Error,
    },
    /// TUNSETPERSIST failed.
    #[error("TUNSETPERSIST on {name}: {source}")]
    SetPersist {
        name: String,
        #[source]
        source: io::Error,
    },
    /// Zero queues were asked for.
    #[error("at least one queue is needed")]
    NoQueues,
}

impl TapError {
    /// The OS error behind this failure, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            TapError::OpenTun(e) => Some(e),
            TapError::SetIff { source, .. }
            | TapError::SetVnetHdrSize { source, .. }
            | TapError::SetOffload { source, .. }
            | TapError::SetSndbuf { source, .. }
            | TapError::SetPersist { source, .. } => Some(source),
            TapError::InvalidName(_) | TapError::NoQueues => None,
        }
    }
}

/// How [`open_queues`] treats an existing interface of that name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create a new interface; fail (EBUSY) if the name exists.
    Create,
    /// Attach to the interface of that name, creating it if missing.
    Attach,
}

/// The queues of one TAP.
#[derive(Debug)]
pub struct Tap {
    /// The interface name (the kernel's choice when asked for `tap%d`).
    pub name: String,
    /// One fd per queue, non-blocking, close-on-exec.
    pub queues: Vec<OwnedFd>,
    /// The offloads the device accepted (`TUN_F_*`).
    pub offloads: u32,
}

/// Opens `queues` queues of the TAP `name` (`%d` lets the kernel pick a
/// number) in the calling thread's network namespace, with the virtio-net
/// header and offloads set up. With `persist` the interface outlives its
/// fds (TUNSETPERSIST) until it is deleted.
pub fn open_queues(
    name: &str,
    queues: usize,
    mode: OpenMode,
    persist: bool,
) -> Result<Tap, TapError> {
    if queues == 0 {
        return Err(TapError::NoQueues);
    }
    let mut fds = Vec::with_capacity(queues);
    let mut actual = name.to_string();
    let mut offloads = 0;
    for i in 0..queues {
        let excl = if i == 0 && mode == OpenMode::Create {
            IFF_TUN_EXCL
        } else {
            0
        };
        let file = open_tun()?;
        actual = set_iff(&file, &actual, QUEUE_FLAGS | excl)?;
        set_vnet_hdr_size(&file, &actual)?;
        offloads = set_offload(&file, &actual)?;
        set_sndbuf(&file, &actual)?;
        if i == 0 && persist {
            set_persist(&file, &actual, true)?;
        }
        fds.push(OwnedFd::from(file));
    }
    Ok(Tap {
        name: actual,
        queues: fds,
        offloads,
    })
}

/// Sets or clears TUNSETPERSIST through one of the TAP's queue fds.
pub fn set_persist(fd: &impl AsRawFd, name: &str, persist: bool) -> Result<(), TapError> {
    // SAFETY: TUNSETPERSIST takes its argument by value (an int, not a
    // pointer); `fd` is a valid open fd borrowed for the call.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(persist),
        )
    };
    if ret < 0 {
        return Err(TapError::SetPersist {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The network namespace the TAP of `queue` is in now (`TUNGETDEVNETNS`,
/// Linux 5.2): it follows the interface when another process moves it.
/// Needs `CAP_NET_ADMIN` over that namespace.
pub fn dev_netns(queue: &impl AsFd) -> io::Result<OwnedFd> {
    super::ioctl_new_fd(queue, libc::TUNGETDEVNETNS)
}

/// The current name of the TAP of `queue` (`TUNGETIFF`): it follows
/// renames, in whichever namespace the interface is.
pub fn dev_name(queue: &impl AsRawFd) -> io::Result<String> {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes a `struct ifreq` through the pointer, which
    // points to a live, properly sized `ifreq`.
    let ret = unsafe {
        libc::ioctl(
            queue.as_raw_fd(),
            libc::TUNGETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(name_of(&ifr))
}

/// The frames each TAP of `queues` (one queue fd per TAP) dropped at its
/// rings because they were full: frames its namespace sent that the reader
/// had not taken in time (the interface's `tx_dropped`, as `ip -s link`
/// shows it there). `None` for an fd that is no TAP queue, or whose
/// namespace or counters are out of reach.
///
/// The interfaces live in other network namespaces (the containers'),
/// which a netlink socket reaches only by being opened there: one thread
/// of its own joins each TAP's namespace in turn (`TUNGETDEVNETNS`, so it
/// follows a TAP another process moved) and ends with the call, so no
/// other thread's namespace changes.
pub fn ring_drops(queues: &[&OwnedFd]) -> Vec<Option<u64>> {
    use super::{netlink::Netlink, ns};
    let walk = || {
        // The namespace joined last, and a socket opened there.
        let mut at: Option<(OwnedFd, Netlink)> = None;
        let mut one = |q: &OwnedFd| -> Option<u64> {
            let there = dev_netns(q).ok()?;
            let moved = match &at {
                Some((ns, _)) => !ns::same(ns, &there).unwrap_or(false),
                None => true,
            };
            if moved {
                ns::setns(&there, nix::sched::CloneFlags::CLONE_NEWNET, "net").ok()?;
                // A socket belongs to the namespace it was opened in.
                at = Some((there, Netlink::open().ok()?));
            }
            let name = dev_name(q).ok()?;
            at.as_mut()?.1.tx_dropped(&name).ok()
        };
        queues.iter().map(|q| one(q)).collect::<Vec<_>>()
    };
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("tapnet-ringstat".into())
            .spawn_scoped(s, walk)
            .ok()
            .and_then(|t| t.join().ok())
    })
    .unwrap_or_else(|| vec![None; queues.len()])
}

fn open_tun() -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)
}

/// TUNSETIFF; returns the name the kernel gave the interface.
fn set_iff(file: &File, name: &str, flags: libc::c_int) -> Result<String, TapError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(TapError::InvalidName(name.to_string()));
    }
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // `ifr_flags` is a short; the TUN flags all fit in 16 bits.
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` through the
    // pointer, which points to a live, properly sized `ifreq`; `file` is an
    // open /dev/net/tun fd.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    };
    if ret < 0 {
        return Err(TapError::SetIff {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(name_of(&ifr))
}

/// The interface name the kernel wrote into `ifr`, an `ifreq` that was
/// zeroed before the ioctl.
fn name_of(ifr: &libc::ifreq) -> String {
    // SAFETY: `ifr_name` holds a NUL-terminated name: IFNAMSIZ bytes, the
    // last one always NUL as the caller zeroed it and names are at most
    // IFNAMSIZ-1 long.
    let cname = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) };
    cname.to_string_lossy().into_owned()
}

fn set_vnet_hdr_size(file: &File, name: &str) -> Result<(), TapError> {
    let size = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which points
    // to a live local; `file` is an attached TAP queue.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &size as *const libc::c_int,
        )
    };
    if ret < 0 {
        return Err(TapError::SetVnetHdrSize {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// TUNSETOFFLOAD with USO when the kernel takes it, else without.
fn set_offload(file: &File, name: &str) -> Result<u32, TapError> {
    let try_set = |flags: libc::c_uint| -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned
        // int, not a pointer); `file` is an attached TAP queue.
        let ret = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    if try_set(OFFLOADS | OFFLOADS_USO).is_ok() {
        return Ok(OFFLOADS | OFFLOADS_USO);
    }
    try_set(OFFLOADS).map_err(|source| TapError::SetOffload {
        name: name.to_string(),
        source,
    })?;
    Ok(OFFLOADS)
}

fn set_sndbuf(file: &File, name: &str) -> Result<(), TapError> {
    let size = SNDBUF;
    // SAFETY: TUNSETSNDBUF reads an int through the pointer, which points to
    // a live local; `file` is an attached TAP queue.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETSNDBUF,
            &size as *const libc::c_int,
        )
    };
    if ret < 0 {
        return Err(TapError::SetSndbuf {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a fresh thread that has its own network namespace (as
    /// root, `unshare(CLONE_NEWNET)` applies to the calling thread only), so
    /// nothing is created in the host's namespace.
    fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (CAP_NET_ADMIN) to make a private network namespace"
        );
        std::thread::spawn(move || {
            crate::sys::ns::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            f()
        })
        .join()
        .expect("test thread panicked")
    }

    #[test]
    fn rejects_bad_names() {
        let file = match open_tun() {
            Ok(f) => f,
            Err(e) => panic!("needs /dev/net/tun: {e}"),
        };
        assert!(matches!(
            set_iff(&file, "", QUEUE_FLAGS),
            Err(TapError::InvalidName(_))
        ));
        assert!(matches!(
            set_iff(&file, "a-name-that-is-far-too-long", QUEUE_FLAGS),
            Err(TapError::InvalidName(_))
        ));
        assert!(matches!(
            open_queues("tap%d", 0, OpenMode::Create, false),
            Err(TapError::NoQueues)
        ));
    }

    #[test]
    fn multi_queue_with_vnet_header() {
        in_private_netns(|| {
            let tap = open_queues("tap%d", 3, OpenMode::Create, false).expect("open 3 queues");
            assert!(tap.name.starts_with("tap"), "{}", tap.name);
            assert_eq!(tap.queues.len(), 3);
            assert_eq!(tap.offloads & OFFLOADS, OFFLOADS);
            // A fourth queue attaches to the same interface.
            let more = open_queues(&tap.name, 1, OpenMode::Attach, false).expect("attach");
            assert_eq!(more.name, tap.name);
            // Creating it again exclusively fails.
            let err = open_queues(&tap.name, 1, OpenMode::Create, false).unwrap_err();
            assert_eq!(
                err.io_error().and_then(|e| e.raw_os_error()),
                Some(libc::EBUSY)
            );
        });
    }

    #[test]
    fn a_queue_names_its_interface_and_namespace() {
        in_private_netns(|| {
            let tap = open_queues("tap%d", 1, OpenMode::Create, false).expect("open");
            assert_eq!(dev_name(&tap.queues[0]).expect("TUNGETIFF"), tap.name);
            let ns = dev_netns(&tap.queues[0]).expect("TUNGETDEVNETNS");
            let here = crate::sys::ns::open_self("net").expect("own netns");
            assert!(crate::sys::ns::same(&ns, &here).expect("compare"));
            let not_a_tap = File::open("/dev/null").expect("/dev/null");
            assert!(dev_name(&not_a_tap).is_err());
        });
    }

    #[test]
    fn persistent_tap_survives_its_fds() {
        in_private_netns(|| {
            let tap = open_queues("tap%d", 2, OpenMode::Create, true).expect("create persistent");
            let name = tap.name.clone();
            drop(tap);
            assert!(
                nix::net::if_::if_nametoindex(name.as_str()).is_ok(),
                "{name} vanished"
            );
            let again = open_queues(&name, 2, OpenMode::Attach, false).expect("reopen");
            set_persist(&again.queues[0], &name, false).expect("clear persist");
            drop(again);
            assert!(
                nix::net::if_::if_nametoindex(name.as_str()).is_err(),
                "{name} still there"
            );
        });
    }

    /// A TAP in a namespace of its own whose ring (`ring` frames deep) is
    /// offered `sent` UDP datagrams that nobody reads: its queue, and the
    /// `tx_dropped` that `ip -s link` shows for it there.
    fn flooded_tap(ring: u32, sent: usize) -> (OwnedFd, u64) {
        in_private_netns(move || {
            // No IPv6 frames of the kernel's own join the count later (the
            // sysctl is this thread's namespace's).
            std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
                .expect("disable IPv6");
            let mut tap = open_queues("tap%d", 1, OpenMode::Create, false).expect("open");
            let mut nl = super::super::netlink::Netlink::open().expect("netlink");
            let i = nl.index(&tap.name).expect("index");
            nl.set_noqueue(i).expect("noqueue");
            nl.set_txqlen(i, ring).expect("txqueuelen");
            nl.add_addr_v4(i, std::net::Ipv4Addr::new(10, 9, 0, 2), 24)
                .expect("address");
            nl.set_link(i, None, None, Some(true)).expect("up");
            let sh = |cmd: &str| {
                let o = std::process::Command::new("sh")
                    .args(["-c", cmd])
                    .output()
                    .expect("run sh");
                assert!(o.status.success(), "{cmd}: {o:?}");
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            // A neighbour that needs no answer, so every datagram goes out.
            sh(&format!(
                "ip neigh add 10.9.0.3 lladdr 02:00:00:00:00:03 dev {} nud permanent",
                tap.name
            ));
            let udp = std::net::UdpSocket::bind("10.9.0.2:0").expect("bind");
            for _ in 0..sent {
                udp.send_to(&[0; 18], "10.9.0.3:9").expect("send");
            }
            let json = sh(&format!("ip -s -j link show dev {}", tap.name));
            let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j");
            let dropped = v[0]["stats64"]["tx"]["dropped"].as_u64().expect("dropped");
            (tap.queues.remove(0), dropped)
        })
    }

    #[test]
    fn ring_drops_are_read_in_each_taps_namespace() {
        let (a, a_dropped) = flooded_tap(64, 500);
        let (b, b_dropped) = flooded_tap(256, 300);
        // What the ring could not hold.
        assert_eq!(a_dropped, 500 - 64);
        assert_eq!(b_dropped, 300 - 256);
        let not_a_tap = OwnedFd::from(File::open("/dev/null").expect("/dev/null"));
        // From this thread's namespace, which holds neither.
        let got = ring_drops(&[&a, &not_a_tap, &b, &a]);
        assert_eq!(
            got,
            [Some(a_dropped), None, Some(b_dropped), Some(a_dropped)]
        );
    }
}
