//! Sandboxes ("containers"): namespaces (net, mount, UTS; user when
//! rootless), the helper that creates/opens TAPs inside a namespace and
//! passes their fds back, and `exec` into a sandbox.
//!
//! CONTRACT (used by the daemon and the CLI):
//! - The CLI spawns the sandbox process ([`Sandbox::spawn`]): a re-exec of
//!   the tapnet binary (`tapnet __sandbox-init`) that unshares its
//!   namespaces (a user namespace first when not root, mapping the caller's
//!   uid/gid to 0), brings `lo` up, bind-mounts the given files over
//!   `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, sets the hostname,
//!   then waits. [`Sandbox::start`] lets it exec CMD.
//! - Interfaces are made from outside by the daemon: [`create_taps`],
//!   [`open_taps`], [`delete_taps`] run a helper (`tapnet __netns-helper`)
//!   that joins the target's user namespace (when it is not the caller's)
//!   and network namespace, does the work and returns the queue fds over
//!   SCM_RIGHTS. TAPs are persistent (TUNSETPERSIST) so that they survive a
//!   daemon restart and can be reopened with [`open_taps`].
//!
//! Implementation notes:
//! - The helper first tries `setns` into the network namespace directly
//!   (a root daemon may enter any namespace and keeps its access to a
//!   0600 `/dev/net/tun`); only when that is refused does it join the
//!   namespace's owning user namespace (`NS_GET_USERNS`) first. Rootless,
//!   `/dev/net/tun` must be mode 0666: the user namespace's root does not
//!   own the host's device node.
//! - Integration tests are not the tapnet binary: they call
//!   [`set_helper_exe`] with `env!("CARGO_BIN_EXE_tapnet")`.

mod helper;
mod init;

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;

pub use init::DEFAULT_PATH;

/// The binary re-executed as `__sandbox-init`/`__netns-helper`; `None`:
/// [`std::env::current_exe`].
static HELPER_EXE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Sets the tapnet binary that [`Sandbox::spawn`] and the TAP functions
/// re-execute (default: the current executable). For integration tests,
/// whose executable is not tapnet: `set_helper_exe(env!("CARGO_BIN_EXE_tapnet"))`.
pub fn set_helper_exe(path: impl Into<PathBuf>) {
    let mut exe = HELPER_EXE.lock().unwrap_or_else(|e| e.into_inner());
    *exe = Some(path.into());
}

fn helper_exe() -> anyhow::Result<PathBuf> {
    let exe = HELPER_EXE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match exe {
        Some(p) => Ok(p),
        None => std::env::current_exe().context("find the tapnet executable"),
    }
}

/// Where a network namespace is.
#[derive(Clone, Debug)]
pub enum NetTarget {
    /// The network (and user) namespace of a process.
    Pid(i32),
    /// A bind-mounted namespace file such as `/run/netns/NAME` or
    /// `/proc/PID/ns/net`; its owning user namespace is found with
    /// `NS_GET_USERNS`.
    Path(PathBuf),
}

/// One TAP interface to create inside a namespace.
#[derive(Clone, Debug)]
pub struct TapConfig {
    /// Interface name inside the namespace (`eth0`, `eth1`, ...).
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Address and prefix length; `None`: no address, and the link stays
    /// down (an external runtime moves and configures it, e.g. Docker).
    pub addr: Option<ipnet::Ipv4Net>,
    /// When set, a default route via this gateway is added.
    pub default_gateway: Option<Ipv4Addr>,
    /// IPv6 address and prefix length (dual-stack networks; with `addr`).
    pub addr6: Option<ipnet::Ipv6Net>,
    /// When set, an IPv6 default route via this gateway is added.
    pub default_gateway6: Option<std::net::Ipv6Addr>,
    /// When set (with `addr`), a link-scope host route to this address on
    /// the interface, with its interface index as metric: the embedded
    /// DNS's service address on a macvlan/ipvlan network
    /// (`tapnet_switch::segment::DNS_ADDR`), outside the subnet. Several
    /// interfaces may each have one (the first made wins, the next takes
    /// over when it goes).
    pub dns_route: Option<Ipv4Addr>,
    /// The link does no ARP (`IFF_NOARP`: ipvlan l3, where every frame is
    /// addressed to the link's own MAC and the switch routes by address).
    pub noarp: bool,
    /// A default route out of the link without a gateway (`default dev
    /// eth0`: ipvlan l3), instead of `default_gateway`.
    pub default_dev: bool,
    /// Likewise for IPv6 (with `addr6`).
    pub default_dev6: bool,
    /// The link's own IPv6 link-local address instead of the kernel's
    /// EUI-64 one (`addr_gen_mode none`: ipvlan endpoints share a MAC).
    pub link_local6: Option<std::net::Ipv6Addr>,
}

/// How the sandbox's network namespace is obtained.
#[derive(Clone, Debug)]
pub enum NetMode {
    /// A new network namespace (bridge networks and `none`).
    New,
    /// Join the network namespace of this process (`host`: the daemon's pid;
    /// `container:NAME`: that container's pid).
    Join(i32),
}

/// Where CMD's stdio goes.
#[derive(Clone, Debug)]
pub enum Stdio {
    /// Inherit the CLI's stdin/stdout/stderr (foreground `run`).
    Inherit,
    /// stdin from /dev/null, stdout and stderr appended to this file, new
    /// session (`run -d`).
    Log(PathBuf),
}

#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub hostname: String,
    pub net: NetMode,
    /// (host file, path inside) bind mounts, e.g. (STATE/hosts, /etc/hosts).
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Paths made unreachable inside the sandbox after the bind mounts
    /// (the daemon's state directory and API socket): directories are
    /// covered with an empty read-only tmpfs, files and sockets with
    /// `/dev/null`.
    pub hide: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    pub cmd: Vec<String>,
    pub stdio: Stdio,
}

/// A sandbox process whose namespaces are ready but whose CMD has not
/// started yet.
///
/// Dropping it without [`Sandbox::start`] makes the sandbox process exit
/// and reaps it.
pub struct Sandbox {
    pub pid: i32,
    /// Control socket to the init process; `None` once started.
    control: Option<OwnedFd>,
}

impl Sandbox {
    /// Spawns the sandbox process and returns once its namespaces are ready.
    pub fn spawn(spec: &SandboxSpec) -> anyhow::Result<Sandbox> {
        let (pid, control) = init::spawn(spec).context("create sandbox")?;
        Ok(Sandbox {
            pid,
            control: Some(control),
        })
    }
    /// Lets the sandbox exec CMD. Returns a handle to wait for it.
    pub fn start(mut self) -> anyhow::Result<Running> {
        let control = self.control.take().context("sandbox already started")?;
        init::start(self.pid, control).context("start sandbox command")?;
        Ok(Running { pid: self.pid })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            // EOF instead of "go": the init exits at once.
            drop(control);
            let _ = init::wait(self.pid);
        }
    }
}

/// A started sandbox (a child of the caller).
pub struct Running {
    pub pid: i32,
}

impl Running {
    /// Waits for CMD to exit; returns its exit code (128+signal if killed).
    pub fn wait(self) -> anyhow::Result<i32> {
        init::wait(self.pid)
    }
}

/// Creates persistent multi-queue TAPs (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|
/// IFF_MULTI_QUEUE, offloads CSUM/TSO4/TSO6) inside `target`, sets MAC, MTU,
/// address, link up and the default route, and returns `queues` fds per TAP
/// in the order of `taps`.
pub fn create_taps(
    target: &NetTarget,
    taps: &[TapConfig],
    queues: usize,
) -> anyhow::Result<Vec<Vec<OwnedFd>>> {
    helper::create(target, taps, queues)
}

/// Reopens existing persistent TAPs by MAC address inside `target` (their
/// names may have changed: Docker renames the TAPs it moves into a
/// container): `queues` fds each.
pub fn open_taps_by_mac(
    target: &NetTarget,
    macs: &[[u8; 6]],
    queues: usize,
) -> anyhow::Result<Vec<Vec<OwnedFd>>> {
    helper::open_by_mac(target, macs, queues)
}

/// Reopens existing persistent TAPs by name inside `target`: `queues` fds each.
pub fn open_taps(
    target: &NetTarget,
    names: &[String],
    queues: usize,
) -> anyhow::Result<Vec<Vec<OwnedFd>>> {
    helper::open(target, names, queues)
}

/// Deletes TAPs inside `target` (missing ones are not an error).
pub fn delete_taps(target: &NetTarget, names: &[String]) -> anyhow::Result<()> {
    helper::delete(target, names)
}

/// Makes `/run/docker/plugins/NAME.sock`, in the mount namespace of
/// process `pid` (joining the user namespace owning it when needed), a
/// symlink to `socket`: how a rootless dockerd, whose `/run` is private to
/// RootlessKit, finds tapnet's driver plugin.
pub fn link_plugin_socket(pid: i32, name: &str, socket: &std::path::Path) -> anyhow::Result<()> {
    helper::link_plugin(pid, name, socket)
}

/// Runs CMD inside the namespaces (user, net, mount, UTS) of process `pid`
/// with stdio inherited; returns its exit code (`tapnet exec`).
pub fn exec_in(pid: i32, cmd: &[String], env: &[(String, String)]) -> anyhow::Result<i32> {
    init::exec_in(pid, cmd, env)
}

/// Entry point of `tapnet __sandbox-init` (hidden; spawned by [`Sandbox::spawn`]).
pub fn init_main() -> std::process::ExitCode {
    init::main()
}

/// Entry point of `tapnet __netns-helper` (hidden; spawned by the TAP functions).
pub fn netns_helper_main() -> std::process::ExitCode {
    helper::main()
}

/// The other processes in `pid`'s mount namespace: a container's
/// processes, since each sandbox has a mount namespace of its own and
/// `tapnet exec` joins it (what Docker's cgroup gives it). Empty when that
/// namespace is the caller's or init's (never a container's), or cannot be
/// read. Processes whose namespace cannot be read are not included.
pub fn mount_namespace_members(pid: i32) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| {
        std::fs::metadata(format!("/proc/{p}/ns/mnt"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let Some(target) = id(&pid.to_string()) else {
        return Vec::new();
    };
    if id("self") == Some(target) || id("1") == Some(target) {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != pid && id(&p.to_string()) == Some(target))
        .collect()
}

/// Start time of a process (field 22 of /proc/PID/stat), to tell a live
/// process from a reused pid. None if the process does not exist.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}
