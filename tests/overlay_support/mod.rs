//! A cluster of tapnet hosts for the overlay tests: an underlay (a kernel
//! bridge in a namespace of the test, 192.168.210.0/24), etcd in its own
//! namespace on it (.250), and hosts: each a `ctl_support::Daemon` (its
//! private namespace wired to the underlay by a veth pair, `.N`) started
//! with `--cluster-store etcd://192.168.210.250:2379 --advertise-addr
//! 192.168.210.N`. Everything is removed on drop, processes killed by PID.
#![allow(dead_code)]

use std::time::Duration;

use crate::ctl_support::*;

pub const ETCD: &str = "192.168.210.250";
/// The host-local network of overlay containers' way out.
pub const GWBRIDGE: &str = "docker_gwbridge";

pub fn host_ip(n: u8) -> String {
    format!("192.168.210.{n}")
}

/// The underlay: a namespace holding bridge `br0`.
pub struct Underlay {
    pub sw: Netns,
    next: std::sync::atomic::AtomicU32,
}

impl Underlay {
    pub fn new() -> Underlay {
        require_root("the overlay tests");
        let sw = Netns::new();
        sw.sh_ok("ip link add br0 type bridge && ip link set br0 up && ip link set lo up");
        Underlay { sw, next: 0.into() }
    }

    /// Wires namespace `ns` to the bridge (its end `eth0` holding `addr`/24).
    pub fn attach(&self, ns: &str, ifname: &str, addr: &str) {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let port = format!("u{}x{i}", std::process::id() % 100000);
        self.sw.sh_ok(&format!(
            "ip link add {port} type veth peer name {ifname} netns {ns} && ip link set {port} master br0 up"
        ));
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg(format!(
                "ip addr add {addr}/24 dev {ifname} && ip link set {ifname} up && ip link set lo up"
            ))
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// etcd in its own namespace on the underlay.
pub struct Etcd {
    pub proc: Option<Bg>,
    pub ns: Netns,
    pub dir: TempDir,
}

impl Etcd {
    pub fn start(u: &Underlay) -> Etcd {
        assert!(
            std::path::Path::new("/usr/bin/etcd").exists(),
            "the overlay tests need etcd (apt-get install etcd-server; sudo ./scripts/test.sh does)"
        );
        let ns = Netns::new();
        u.attach(&ns.name, "eth0", ETCD);
        let dir = TempDir::new();
        let mut e = Etcd {
            proc: None,
            ns,
            dir,
        };
        e.spawn();
        e
    }

    pub fn spawn(&mut self) {
        let data = self.dir.0.join("data").display().to_string();
        let client = format!("http://{ETCD}:2379");
        self.proc = Some(self.ns.spawn(&[
            "etcd",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
        ]));
        retry("etcd", Duration::from_secs(20), || {
            let o = self.ns.sh(&format!(
                "ETCDCTL_API=3 etcdctl --endpoints {client} endpoint health"
            ));
            (o.code == 0).then_some(()).ok_or(o.stderr)
        });
    }

    /// SIGSTOP / SIGCONT: etcd unreachable, then back.
    pub fn pause(&self, on: bool) {
        let pid = nix::unistd::Pid::from_raw(self.proc.as_ref().unwrap().pid() as i32);
        let sig = if on {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(pid, sig).unwrap();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(p) = &self.proc {
            let pid = nix::unistd::Pid::from_raw(p.pid() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

/// A host: a daemon whose namespace is on the underlay at `.n`.
pub fn host(u: &Underlay, n: u8, extra: &[&str]) -> Daemon {
    host_env(u, n, extra, &[])
}

/// [`host`] with extra environment for the daemon.
pub fn host_env(u: &Underlay, n: u8, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    let store = format!("etcd://{ETCD}:2379");
    let ip = host_ip(n);
    let mut args = vec!["--cluster-store", &store, "--advertise-addr", &ip];
    args.extend(extra);
    Daemon::start_with_env(&args, env, |d| {
        u.attach(&d.netns().name, "ul0", &host_ip(n));
    })
}

/// Waits until `f` holds on daemon `d`, with the daemon's log on failure.
pub fn eventually(d: &Daemon, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}\n--- daemon log:\n{}", d.log());
}
