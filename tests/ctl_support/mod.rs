//! Shared helpers of the control-plane integration tests: a private network
//! namespace per test (removed on drop, also when the test fails), a daemon
//! started in it with its own `--root` and socket, killed by PID on drop,
//! and a way to run the CLI against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tapnet");

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// How this test process can make private network namespaces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Privilege {
    Root,
    UserNs,
}

/// Root, or unprivileged user namespaces; panics with a clear message if
/// neither is available.
pub fn privilege() -> Privilege {
    if nix::unistd::geteuid().is_root() {
        return Privilege::Root;
    }
    let ok = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Privilege::UserNs;
    }
    panic!(
        "these tests need root or unprivileged user namespaces (kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0); neither is available"
    );
}

/// A named network namespace (`ip netns add`), deleted on drop. Only made
/// when running as root.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("tn");
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(st.success(), "ip netns add {name} failed");
        Netns { name }
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique("tapnet-test-"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon under test. Fields drop in order: the daemon is killed first,
/// then its namespace and directory go.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub ns: Option<Netns>,
    pub dir: TempDir,
    pub privilege: Privilege,
    /// Extra `tapnet daemon` arguments.
    pub extra: Vec<String>,
    /// Extra environment of the daemon process.
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// A fresh namespace, directory and daemon.
    pub fn start() -> Daemon {
        Daemon::start_with(&[], |_| {})
    }

    /// Like [`Daemon::start`] with extra daemon arguments; `before` runs
    /// with the daemon's namespace before the daemon starts (e.g. to start
    /// a resolver the daemon forwards to).
    pub fn start_with(extra: &[&str], before: impl FnOnce(&Daemon)) -> Daemon {
        Daemon::start_with_env(extra, &[], before)
    }

    /// [`Daemon::start_with`] with extra environment for the daemon.
    pub fn start_with_env(
        extra: &[&str],
        env: &[(&str, &str)],
        before: impl FnOnce(&Daemon),
    ) -> Daemon {
        let privilege = privilege();
        let dir = TempDir::new();
        let ns = (privilege == Privilege::Root).then(Netns::new);
        let mut d = Daemon {
            child: None,
            socket: dir.0.join("tapnet.sock"),
            root: dir.0.join("root"),
            ns,
            dir,
            privilege,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        before(&d);
        d.spawn();
        d
    }

    /// Starts (again) the daemon process on the same root and socket.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, BIN]);
                c
            }
            None => {
                let mut c = Command::new("unshare");
                c.args(["--user", "--map-root-user", "--net", "--", BIN]);
                c
            }
        };
        cmd.arg("daemon");
        // One worker unless the test asks for more.
        if !self.extra.iter().any(|a| a == "--workers") {
            cmd.args(["--workers", "1"]);
        }
        cmd.arg("--root")
            .arg(&self.root)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        // The Docker plugin's default socket is the host's
        // /run/docker/plugins: off unless a test asks for one.
        if !self.extra.iter().any(|a| a == "--docker-plugin") {
            cmd.args(["--docker-plugin", "none"]);
        }
        cmd.args(&self.extra)
            .env("TAPNET_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.0.join("daemon.log")).unwrap());
        let child = cmd.spawn().expect("spawn the daemon");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early ({st}): {}", self.log());
            }
            assert!(Instant::now() < end, "daemon did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Its pid while it runs.
    pub fn running_pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// `kill -9` the daemon (by its PID) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; the daemon's exit status (`None` if it was not
    /// running).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        c.wait().ok()
    }

    /// Waits up to `timeout` for the daemon to exit by itself and reaps
    /// it; its exit status, `None` if it still runs (then it is left
    /// running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            let st = self.child.as_mut()?.try_wait().ok().flatten();
            if st.is_some() {
                self.child = None;
                return st;
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs `tapnet -H SOCKET ARGS...` and returns its output.
    pub fn tapnet(&self, args: &[&str]) -> Out {
        let o = Command::new(BIN)
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tapnet");
        Out::from(o)
    }

    /// Like [`Daemon::tapnet`], asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.tapnet(args);
        assert!(
            o.code == 0,
            "tapnet {args:?} failed ({}): {}\ndaemon log:\n{}",
            o.code,
            o.stderr,
            self.log()
        );
        o.stdout
    }

    /// Runs it expecting a failure with exactly one line on stderr; returns
    /// that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.tapnet(args);
        assert!(o.code != 0, "tapnet {args:?} succeeded: {}", o.stdout);
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "tapnet {args:?}: expected one line on stderr, got {:?}",
            o.stderr
        );
        assert!(!lines[0].trim().is_empty());
        lines[0].to_string()
    }

    pub fn client(&self) -> tapnet::client::Client {
        tapnet::client::Client::new(self.socket.clone())
    }

    pub fn inspect_network(&self, name: &str) -> serde_json::Value {
        let out = self.ok(&["network", "inspect", name]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    }

    pub fn network_names(&self) -> Vec<String> {
        let out = self.ok(&["network", "ls", "--format", "json"]);
        out.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["Name"].as_str().unwrap().to_string()
            })
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The containers this test started go first (the daemon kills them
        // by pid), then the daemon.
        if self.child.is_some() {
            let c = self.client();
            if let Ok(list) = c.get::<Vec<serde_json::Value>>("/containers/json?all=1") {
                for v in list {
                    if let Some(id) = v["Id"].as_str() {
                        let _ = c.delete(&format!("/containers/{id}?force=1"));
                    }
                }
            }
        }
        self.kill9();
    }
}

/// A finished CLI run.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Waits until `f` holds (polling), or panics with `what`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Runs `f` on a crowded machine: two more threads spinning than the
/// machine has online CPUs (what the daemon's `--sleep-when-crowded`
/// compares with, not this process's share of them: every spinner counts
/// as runnable).
pub fn crowded<T>(f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .map_or(2, |n| n.max(1) as usize);
    let spinners: Vec<_> = (0..cpus + 2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let r = f();
    stop.store(true, Ordering::Relaxed);
    for t in spinners {
        t.join().unwrap();
    }
    r
}

impl Daemon {
    /// `tapnet stats --format json`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["stats", "--format", "json"])).unwrap()
    }

    /// The workers' busy-polling time so far, seconds, summed (`tapnet
    /// stats`' `spin_seconds`).
    pub fn spin_seconds(&self) -> f64 {
        let v = self.stats();
        v["workers"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|w| w["spin_seconds"].as_f64().unwrap())
            .sum()
    }

    /// `tapnet inspect CONTAINER`, the first (only) object.
    pub fn inspect_container(&self, c: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", c])).unwrap();
        v[0].clone()
    }

    /// The container's IPv4 address on `net`.
    pub fn ip_of(&self, c: &str, net: &str) -> String {
        self.inspect_container(c)["NetworkSettings"]["Networks"][net]["IPAddress"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Container `c`'s IPv6 address on `net` (`inspect`'s
    /// `GlobalIPv6Address`).
    pub fn ip6_of(&self, c: &str, net: &str) -> String {
        self.inspect_container(c)["NetworkSettings"]["Networks"][net]["GlobalIPv6Address"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Drops of `reason` counted on port `port` (`tapnet stats`; 0 when
    /// none, or no such port).
    pub fn port_drops(&self, port: &str, reason: &str) -> u64 {
        self.stats()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == port)
            .and_then(|p| p["drops"][reason].as_u64())
            .unwrap_or(0)
    }

    /// `tapnet run -d --name NAME --network N... EXTRA... -- sleep 300`.
    pub fn sleeper(&self, name: &str, nets: &[&str], extra: &[&str]) {
        let mut args = vec!["run", "-d", "--name", name];
        for n in nets {
            args.extend(["--network", n]);
        }
        args.extend(extra);
        args.extend(["--", "sleep", "300"]);
        self.ok(&args);
    }
}

/// Panics (never skips) unless the test runs as root: the NAT tests wire
/// veth pairs between the daemon's namespace and namespaces of their own.
pub fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root (it creates network namespaces and veth pairs)"
    );
}

impl Netns {
    /// `sh -c SCRIPT` inside the namespace.
    pub fn sh(&self, script: &str) -> Out {
        Out::from(self.exec(&["sh", "-c", script]))
    }

    /// Like [`Netns::sh`], asserting success; returns stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.code == 0,
            "in netns {}: `{script}` failed ({}): {}{}",
            self.name,
            o.code,
            o.stdout,
            o.stderr
        );
        o.stdout
    }

    /// Brings `lo` up.
    pub fn lo_up(&self) {
        self.sh_ok("ip link set lo up");
    }

    /// Starts a background process (a server) inside the namespace, in a
    /// process group of its own; see [`Bg`].
    pub fn spawn(&self, args: &[&str]) -> Bg {
        let mut a = vec!["ip", "netns", "exec", &self.name];
        a.extend(args);
        Bg::spawn(&a)
    }
}

/// A background process started by a test, in its own process group
/// (so that the children it forks, e.g. `socat ...,fork`, belong to it):
/// on drop the whole group is killed (SIGKILL) and the process reaped.
/// Its stdout and stderr go to a file, read by [`Bg::log`].
pub struct Bg {
    child: Child,
    what: String,
    dir: TempDir,
}

impl Bg {
    pub fn spawn(args: &[&str]) -> Bg {
        use std::os::unix::process::CommandExt;
        let dir = TempDir::new();
        let log = std::fs::File::create(dir.0.join("log")).unwrap();
        let child = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {args:?}: {e}"));
        Bg {
            child,
            what: args.join(" "),
            dir,
        }
    }

    /// What it printed so far, with the command line, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "--- {} (pid {}):\n{}",
            self.what,
            self.child.id(),
            std::fs::read_to_string(self.dir.0.join("log")).unwrap_or_default()
        )
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics (with its output) if it has exited already.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("exited early ({st}): {}", self.log());
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // The group is ours: made by process_group(0) at spawn.
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An "outside" network namespace wired to a daemon's namespace (the
/// daemon's "host") by a veth pair: `tnout0` on the host side holds
/// `host_addrs`, `eth0` in the outside namespace holds `outside_addr`
/// (CIDRs of one documentation range, so no route leads anywhere else).
/// `lo` is up in both. Deleting the namespace on drop removes the pair.
pub struct Outside {
    pub ns: Netns,
}

impl Outside {
    pub fn connect(host: &Netns, host_addrs: &[&str], outside_addr: &str) -> Outside {
        let ns = Netns::new();
        ns.lo_up();
        host.lo_up();
        let mut script = format!(
            "ip link add tnout0 type veth peer name eth0 netns {} && ",
            ns.name
        );
        for a in host_addrs {
            script += &format!("ip addr add {a} dev tnout0 && ");
        }
        script += "ip link set tnout0 up";
        host.sh_ok(&script);
        ns.sh_ok(&format!(
            "ip addr add {outside_addr} dev eth0 && ip link set eth0 up"
        ));
        Outside { ns }
    }
}

/// Polls `f` until it returns `Ok`, or panics with `what` and the last
/// error it gave (e.g. the last command output).
pub fn retry<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= end => panic!("timed out waiting for {what}; last: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

impl Daemon {
    /// The daemon's namespace ("the host" of its containers); root only.
    pub fn netns(&self) -> &Netns {
        self.ns
            .as_ref()
            .expect("the daemon runs in a named namespace only as root")
    }

    /// The gateway address of `net` (`network inspect`, IPAM config).
    pub fn gateway_of(&self, net: &str) -> String {
        self.inspect_network(net)["IPAM"]["Config"][0]["Gateway"]
            .as_str()
            .unwrap_or_else(|| panic!("no gateway in network inspect {net}"))
            .to_string()
    }

    /// `tapnet exec C -- sh -c SCRIPT`.
    pub fn exec_sh(&self, c: &str, script: &str) -> Out {
        self.tapnet(&["exec", c, "--", "sh", "-c", script])
    }
}
