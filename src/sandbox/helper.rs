//! `tapnet __netns-helper`: creates, opens or deletes TAPs inside another
//! network namespace and hands the queue fds back; also links tapnet's
//! Docker plugin socket into a rootless dockerd's mount namespace.
//!
//! Protocol, over a `SOCK_SEQPACKET` pair whose child end is the helper's
//! stdin: the parent sends one JSON [`Request`]; the helper answers with one
//! JSON [`Reply`] carrying the first [`MAX_FDS`] fds, then as many `+`
//! messages as needed for the rest, in order (TAP by TAP, queue by queue).
//!
//! The helper is a fresh single-threaded process (the CLI dispatches to it
//! before anything else runs), as `setns` into a user namespace requires.
//! It first tries to join the network namespace directly (a root daemon can
//! enter any namespace, and keeps its access to `/dev/net/tun`); when that
//! is not permitted it joins the user namespace owning the network
//! namespace (found with `NS_GET_USERNS`) first.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{NetTarget, TapConfig};
use crate::sys::fdpass::{self, MAX_FDS};
use crate::sys::netlink::{self, Netlink};
use crate::sys::ns::{self, CloneFlags};
use crate::sys::tap::{self, OpenMode};

#[derive(Serialize, Deserialize, Debug)]
enum Target {
    Pid(i32),
    Path(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pid(pid) => write!(f, "/proc/{pid}/ns/net"),
            Target::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

impl From<&NetTarget> for Target {
    fn from(t: &NetTarget) -> Target {
        match t {
            NetTarget::Pid(pid) => Target::Pid(*pid),
            NetTarget::Path(path) => Target::Path(path.clone()),
        }
    }
}

#[derive(Serialize, Deserialize, Debug)]
struct WireTap {
    name: String,
    mac: [u8; 6],
    mtu: u32,
    /// Address and prefix; none: no address and the link left down.
    addr: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
    #[serde(default)]
    addr6: Option<(std::net::Ipv6Addr, u8)>,
    #[serde(default)]
    gateway6: Option<std::net::Ipv6Addr>,
    #[serde(default)]
    dns_route: Option<Ipv4Addr>,
    noarp: bool,
    #[serde(default)]
    default_dev: bool,
    #[serde(default)]
    default_dev6: bool,
    #[serde(default)]
    link_local6: Option<std::net::Ipv6Addr>,
}

#[derive(Serialize, Deserialize, Debug)]
enum Op {
    Create {
        taps: Vec<WireTap>,
        queues: usize,
    },
    Open {
        names: Vec<String>,
        queues: usize,
    },
    OpenByMac {
        macs: Vec<[u8; 6]>,
        queues: usize,
    },
    Delete {
        names: Vec<String>,
    },
    /// In the target's mount namespace (not its network namespace): makes
    /// `/run/docker/plugins/<name>.sock` a symlink to `socket`.
    LinkPlugin {
        name: String,
        socket: PathBuf,
    },
}

#[derive(Serialize, Deserialize, Debug)]
struct Request {
    target: Target,
    op: Op,
}

#[derive(Serialize, Deserialize, Debug)]
enum Reply {
    /// Number of fds per TAP.
    Ok(Vec<usize>),
    /// One line saying what failed.
    Err(String),
}

/// Largest request or reply.
const MAX_MSG: usize = 1 << 20;

/// How long the helper may take to answer.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) fn create(
    target: &NetTarget,
    taps: &[TapConfig],
    queues: usize,
) -> anyhow::Result<Vec<Vec<OwnedFd>>> {
    let taps = taps
        .iter()
        .map(|t| WireTap {
            name: t.name.clone(),
            mac: t.mac,
            mtu: t.mtu,
            addr: t.addr.map(|a| (a.addr(), a.prefix_len())),
            gateway: t.default_gateway,
            addr6: t.addr6.map(|a| (a.addr(), a.prefix_len())),
            gateway6: t.default_gateway6,
            dns_route: t.dns_route,
            noarp: t.noarp,
            default_dev: t.default_dev,
            default_dev6: t.default_dev6,
            link_local6: t.link_local6,
        })
        .collect();
    run(Request {
        target: target.into(),
        op: Op::Create { taps, queues },
    })
}

pub(super) fn open(
    target: &NetTarget,
    names: &[String],
    queues: usize,
) -> anyhow::Result<Vec<Vec<OwnedFd>>> {
    run(Request {
        target: target.into(),
        op: Op::Open {
            names: names.to_vec(),
            queues,
        },
    })
}

pub(super) fn open_by_mac(
    target: &NetTarget,
    macs: &[[u8; 6]],
    queues: usize,
) -> anyhow::Result<Vec<Vec<OwnedFd>>> {
    run(Request {
        target: target.into(),
        op: Op::OpenByMac {
            macs: macs.to_vec(),
            queues,
        },
    })
}

pub(super) fn delete(target: &NetTarget, names: &[String]) -> anyhow::Result<()> {
    run(Request {
        target: target.into(),
        op: Op::Delete {
            names: names.to_vec(),
        },
    })
    .map(drop)
}

/// Makes `/run/docker/plugins/NAME.sock` in the mount namespace of process
/// `pid` a symlink to `socket` (a path that resolves there too).
pub(super) fn link_plugin(pid: i32, name: &str, socket: &std::path::Path) -> anyhow::Result<()> {
    run(Request {
        target: Target::Pid(pid),
        op: Op::LinkPlugin {
            name: name.to_string(),
            socket: socket.to_path_buf(),
        },
    })
    .map(drop)
}

/// Runs one helper process for `req` and collects its fds.
fn run(req: Request) -> anyhow::Result<Vec<Vec<OwnedFd>>> {
    let exe = super::helper_exe()?;
    let (ours, theirs) =
        fdpass::seqpacket_pair().context("create socket pair for the netns helper")?;
    let mut child = Command::new(&exe)
        .arg("__netns-helper")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn netns helper {}", exe.display()))?;
    let result = fdpass::set_recv_timeout(&ours, HELPER_TIMEOUT)
        .map_err(anyhow::Error::from)
        .and_then(|()| exchange(&ours, &req));
    drop(ours);
    if let Err(e) = &result {
        if e.downcast_ref::<fdpass::FdPassError>()
            .is_some_and(|e| matches!(e, fdpass::FdPassError::TimedOut))
        {
            // Our own child, by its pid; it is reaped just below.
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "netns helper for {} did not answer within {}s",
                req.target,
                HELPER_TIMEOUT.as_secs()
            );
        }
    }
    let status = child.wait().context("wait for the netns helper")?;
    match result {
        Ok(Some(fds)) => Ok(fds),
        Ok(None) => anyhow::bail!(
            "netns helper for {} exited without answering ({status})",
            req.target
        ),
        Err(e) => Err(e),
    }
}

/// Sends the request and reads the reply; `None` if the helper hung up.
fn exchange(sock: &OwnedFd, req: &Request) -> anyhow::Result<Option<Vec<Vec<OwnedFd>>>> {
    let json = serde_json::to_vec(req).context("encode netns helper request")?;
    fdpass::send(sock, &json, &[]).context("send request to the netns helper")?;
    let mut buf = vec![0u8; MAX_MSG];
    let (n, mut fds) = fdpass::recv(sock, &mut buf).context("read the netns helper's reply")?;
    if n == 0 {
        return Ok(None);
    }
    let reply: Reply =
        serde_json::from_slice(&buf[..n]).context("decode the netns helper's reply")?;
    let counts = match reply {
        Reply::Ok(counts) => counts,
        Reply::Err(msg) => return Err(anyhow::anyhow!(msg)),
    };
    let total: usize = counts.iter().sum();
    while fds.len() < total {
        let (n, more) = fdpass::recv(sock, &mut buf).context("read fds from the netns helper")?;
        if n == 0 && more.is_empty() {
            anyhow::bail!("netns helper hung up after {} of {total} fds", fds.len());
        }
        fds.extend(more);
    }
    let mut fds = fds.into_iter();
    Ok(Some(
        counts
            .iter()
            .map(|&c| fds.by_ref().take(c).collect())
            .collect(),
    ))
}

/// Entry point of `tapnet __netns-helper`.
pub(super) fn main() -> ExitCode {
    let sock = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tapnet __netns-helper: stdin: {e}");
            return ExitCode::from(125);
        }
    };
    let mut buf = vec![0u8; MAX_MSG];
    let req: Request = match fdpass::recv(&sock, &mut buf)
        .map_err(anyhow::Error::from)
        .and_then(|(n, _)| serde_json::from_slice(&buf[..n]).map_err(anyhow::Error::from))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tapnet __netns-helper: read request: {e:#}");
            return ExitCode::from(125);
        }
    };
    let (reply, fds) = match serve(&req) {
        Ok(taps) => (
            Reply::Ok(taps.iter().map(Vec::len).collect()),
            taps.into_iter().flatten().collect(),
        ),
        Err(msg) => (Reply::Err(msg), Vec::new()),
    };
    let failed = matches!(reply, Reply::Err(_));
    if let Err(e) = send_reply(&sock, &reply, &fds) {
        eprintln!("tapnet __netns-helper: send reply: {e:#}");
        return ExitCode::from(125);
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn send_reply(sock: &OwnedFd, reply: &Reply, fds: &[OwnedFd]) -> anyhow::Result<()> {
    let json = serde_json::to_vec(reply)?;
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let mut chunks = borrowed.chunks(MAX_FDS);
    fdpass::send(sock, &json, chunks.next().unwrap_or(&[]))?;
    for chunk in chunks {
        fdpass::send(sock, b"+", chunk)?;
    }
    Ok(())
}

/// Does the work of `req` in this process; errors are one line.
fn serve(req: &Request) -> Result<Vec<Vec<OwnedFd>>, String> {
    let target = &req.target;
    if let Op::LinkPlugin { name, socket } = &req.op {
        // Its mount namespace, not its network namespace.
        let Target::Pid(pid) = target else {
            return Err("a plugin link needs a process, not a path".into());
        };
        enter_mount(*pid).map_err(|e| format!("join /proc/{pid}/ns/mnt: {e}"))?;
        return link_here(name, socket)
            .map(|()| Vec::new())
            .map_err(|e| format!("in the mount namespace of pid {pid}: {e}"));
    }
    enter(target).map_err(|e| format!("join {target}: {e}"))?;
    match &req.op {
        Op::LinkPlugin { .. } => unreachable!("served above"),
        Op::Create { taps, queues } => create_here(target, taps, *queues),
        Op::Open { names, queues } => names
            .iter()
            .map(|name| {
                if netlink::link_index(name).is_none() {
                    return Err(format!("open tap {name} in {target}: No such device"));
                }
                tap::open_queues(name, *queues, OpenMode::Attach, false)
                    .map(|t| t.queues)
                    .map_err(|e| format!("open tap {name} in {target}: {e}"))
            })
            .collect(),
        Op::OpenByMac { macs, queues } => {
            let links = links_by_mac().map_err(|e| format!("list links in {target}: {e}"))?;
            macs.iter()
                .map(|mac| {
                    let Some((name, _)) = links.iter().find(|(_, m)| m == mac) else {
                        return Err(format!(
                            "open tap in {target}: no link with MAC {}",
                            crate::model::Mac(*mac)
                        ));
                    };
                    tap::open_queues(name, *queues, OpenMode::Attach, false)
                        .map(|t| t.queues)
                        .map_err(|e| format!("open tap {name} in {target}: {e}"))
                })
                .collect()
        }
        Op::Delete { names } => {
            let mut nl = Netlink::open().map_err(|e| format!("delete taps in {target}: {e}"))?;
            let mut errors = Vec::new();
            for name in names {
                if let Some(index) = netlink::link_index(name) {
                    match nl.del_link(index) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                        Err(e) => errors.push(format!("delete tap {name} in {target}: {e}")),
                    }
                }
            }
            if errors.is_empty() {
                Ok(Vec::new())
            } else {
                Err(errors.join("; "))
            }
        }
    }
}

/// Joins the network namespace of `target` (and, if needed, its owner).
fn enter(target: &Target) -> Result<(), ns::NsError> {
    let net = match target {
        Target::Pid(pid) => ns::open_of(*pid, "net")?,
        Target::Path(path) => ns::open(path)?,
    };
    join(&net, CloneFlags::CLONE_NEWNET, "net")
}

/// Joins the mount namespace of process `pid` (and first, if needed, the
/// user namespace owning it: a rootless dockerd's RootlessKit).
fn enter_mount(pid: i32) -> Result<(), ns::NsError> {
    join(&ns::open_of(pid, "mnt")?, CloneFlags::CLONE_NEWNS, "mnt")
}

/// Joins namespace `nsfd` directly (root can enter any); when that is not
/// permitted, joins the user namespace owning it first (an ordinary user
/// owns the namespaces of its own containers and of its RootlessKit).
fn join(nsfd: &OwnedFd, kind: CloneFlags, what: &'static str) -> Result<(), ns::NsError> {
    match ns::setns(nsfd, kind, what) {
        Ok(()) => return Ok(()),
        Err(e) if e.io_error().raw_os_error() == Some(libc::EPERM) => {}
        Err(e) => return Err(e),
    }
    let owner = ns::owning_userns(nsfd)?;
    if !ns::same(&owner, &ns::open_self("user")?)? {
        ns::setns(&owner, CloneFlags::CLONE_NEWUSER, "user")?;
    }
    ns::setns(nsfd, kind, what)
}

/// `/run/docker/plugins/NAME.sock` -> `socket`, replacing what was there;
/// checks that the link leads to a socket.
fn link_here(name: &str, socket: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let dir = std::path::Path::new("/run/docker/plugins");
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let link = dir.join(format!("{name}.sock"));
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("remove {}: {e}", link.display())),
    }
    std::os::unix::fs::symlink(socket, &link)
        .map_err(|e| format!("link {} to {}: {e}", link.display(), socket.display()))?;
    match std::fs::metadata(&link) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(format!("{} is not a socket there", socket.display())),
        Err(e) => Err(format!("{} is not reachable there: {e}", socket.display())),
    }
}

/// Creates and configures every TAP; on failure deletes the ones made.
fn create_here(
    target: &Target,
    taps: &[WireTap],
    queues: usize,
) -> Result<Vec<Vec<OwnedFd>>, String> {
    let mut nl = Netlink::open().map_err(|e| format!("create taps in {target}: {e}"))?;
    // An existing namespace (`tapnet attach`) may have `lo` down.
    if let Some(lo) = netlink::link_index("lo") {
        let _ = nl.set_link(lo, None, None, Some(true));
    }
    let mut made: Vec<(u32, Vec<OwnedFd>)> = Vec::new();
    let undo = |made: &mut Vec<(u32, Vec<OwnedFd>)>, nl: &mut Netlink| {
        for (index, fds) in made.drain(..) {
            let _ = nl.del_link(index);
            drop(fds);
        }
    };
    for t in taps {
        if netlink::link_index(&t.name).is_some() {
            undo(&mut made, &mut nl);
            return Err(format!("create tap {} in {target}: File exists", t.name));
        }
        let dev = match tap::open_queues(&t.name, queues, OpenMode::Create, true) {
            Ok(dev) => dev,
            Err(e) => {
                undo(&mut made, &mut nl);
                return Err(format!("create tap {} in {target}: {e}", t.name));
            }
        };
        let index = match nl.index(&dev.name) {
            Ok(i) => i,
            Err(e) => {
                undo(&mut made, &mut nl);
                return Err(format!("create tap {} in {target}: {e}", t.name));
            }
        };
        made.push((index, dev.queues));
        if let Err(e) = configure(&mut nl, index, t) {
            undo(&mut made, &mut nl);
            return Err(format!("configure tap {} in {target}: {e}", t.name));
        }
    }
    Ok(made.into_iter().map(|(_, fds)| fds).collect())
}

/// The links of the current network namespace with their MAC addresses
/// (`getifaddrs`' `AF_PACKET` entries: netlink, so this namespace's, not
/// the one `/sys` was mounted from).
fn links_by_mac() -> nix::Result<Vec<(String, [u8; 6])>> {
    let mut out = vec![];
    for ifa in nix::ifaddrs::getifaddrs()? {
        let mac = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_link_addr())
            .and_then(|l| l.addr());
        if let Some(mac) = mac {
            if !out.iter().any(|(n, _)| *n == ifa.interface_name) {
                out.push((ifa.interface_name, mac));
            }
        }
    }
    Ok(out)
}

/// Turns IPv6 off on `name`, an endpoint's interface on a network without
/// IPv6, before the link comes up, as Docker does (since 26.1): no
/// link-local address, so none of the frames a fresh IPv6 interface sends
/// by itself (Duplicate Address Detection, Router Solicitations, MLD
/// reports: about eight per container), which the switch floods to every
/// port of the network: with 256 containers, each newcomer's became some
/// 2,000 TAP writes. Best effort: a kernel without IPv6, or an interface
/// whose MTU is below IPv6's 1280, has no such file, and where `/proc/sys`
/// is read-only the container keeps its link-local address as before.
fn disable_ipv6(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
}

/// Gives the TAP no queueing discipline (`noqueue`, what a veth has), before
/// it goes up. A multi-queue TAP has 256 transmit queues whatever the number
/// attached, and the kernel's default gives each its own qdisc: with
/// `pfifo_fast`, three rings of [`TAP_TXQLEN`] pointers per queue, 12 MiB of
/// unreclaimable kernel memory per interface (measured: `SUnreclaim` grew
/// 12.9 MiB per container, 0.4 MiB in all with `noqueue`). The qdisc never
/// holds a frame anyway: the TAP driver drops at a full ring instead of
/// stopping its queue. Best effort: where the kernel refuses (no
/// `CAP_NET_ADMIN` over the namespace), the interface keeps the default.
fn no_qdisc(nl: &mut Netlink, index: u32) {
    let _ = nl.set_noqueue(index);
}

/// Each TAP queue's ring of frames waiting for the switch (`txqueuelen`;
/// the kernel's default for a TAP is 500). A deeper ring rides out the
/// moments a worker is not scheduled, for 16 KiB of pointers per queue;
/// frames are only held while the switch lags. Measured on a 2-core VM
/// with a 64-byte UDP flood (six alternating runs): 64.6k -> 66.7k pkt/s
/// received (medians), within the noise: the flood is CPU-bound there.
pub const TAP_TXQLEN: u32 = 2048;

fn configure(nl: &mut Netlink, index: u32, t: &WireTap) -> Result<(), netlink::NetlinkError> {
    nl.set_link(index, Some(t.mac), Some(t.mtu), None)?;
    nl.set_txqlen(index, TAP_TXQLEN)?;
    no_qdisc(nl, index);
    if t.noarp {
        nl.set_noarp(index)?;
    }
    if t.link_local6.is_some() {
        nl.set_addr_gen_mode_none(index)?;
    } else if t.addr.is_some() && t.addr6.is_none() {
        disable_ipv6(&t.name);
    }
    let Some((addr, prefix)) = t.addr else {
        return Ok(());
    };
    nl.add_addr_v4(index, addr, prefix)?;
    if let Some((addr6, prefix6)) = t.addr6 {
        nl.add_addr_v6(index, addr6, prefix6)?;
    }
    if let Some(ll) = t.link_local6 {
        nl.add_addr_v6(index, ll, 64)?;
    }
    nl.set_link(index, None, None, Some(true))?;
    if let Some(dns) = t.dns_route {
        nl.add_link_route(index, dns, index)?;
    }
    if let Some(gw) = t.gateway {
        nl.add_default_route(index, gw.into())?;
    }
    if let (Some(gw6), Some(_)) = (t.gateway6, t.addr6) {
        nl.add_default_route(index, gw6.into())?;
    }
    if t.default_dev {
        nl.add_default_dev_route(index, false)?;
    }
    if t.default_dev6 && t.addr6.is_some() {
        nl.add_default_dev_route(index, true)?;
    }
    Ok(())
}
