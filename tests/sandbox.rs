//! Sandboxes and TAPs on real devices.
//!
//! Needs root, or unprivileged user namespaces with `/dev/net/tun` mode
//! 0666; without either the tests FAIL with a message saying so. As root,
//! the rootless flow is also run as the user `tapnettest` (`useradd -m
//! tapnettest`). Everything is made inside namespaces the tests create:
//! the sandbox processes are killed by PID (Drop guards), which destroys
//! their network namespaces and the TAPs in them.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tapnet::sandbox::{self, NetMode, NetTarget, Sandbox, SandboxSpec, Stdio, TapConfig};

const VNET: usize = tapnet::sys::tap::VNET_HDR_LEN;
const MAC0: [u8; 6] = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x02];
const MAC1: [u8; 6] = [0x02, 0x42, 0x0a, 0x59, 0x00, 0x02];
const GW_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x01];
const ADDR0: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const GW0: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

/// The tapnet binary the library re-executes: the env override (used when
/// the test binary runs as another user from a copy), else Cargo's.
fn tapnet_exe() -> PathBuf {
    std::env::var_os("TAPNET_TEST_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tapnet")))
}

/// Fails (never skips) when this machine cannot run sandboxes.
fn require_privileges() {
    sandbox::set_helper_exe(tapnet_exe());
    if nix::unistd::geteuid().is_root() {
        return;
    }
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    assert!(
        max.trim().parse::<u64>().unwrap_or(0) > 0,
        "these tests need root or unprivileged user namespaces (user.max_user_namespaces is {max:?})"
    );
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone") {
        assert_eq!(
            v.trim(),
            "1",
            "these tests need root or unprivileged user namespaces (kernel.unprivileged_userns_clone=0)"
        );
    }
    let mode = std::fs::metadata("/dev/net/tun")
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(
        mode & 0o006,
        0o006,
        "rootless TAPs need /dev/net/tun to be mode 0666 (chmod 0666 /dev/net/tun)"
    );
}

/// A private directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tapnet-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).expect("create temp dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        TempDir(path)
    }
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills (SIGKILL) and reaps a process this test started, unless disarmed.
struct Reaper(Option<i32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
    }
}

fn spec(
    hostname: &str,
    net: NetMode,
    files: Vec<(PathBuf, PathBuf)>,
    cmd: &[&str],
    stdio: Stdio,
) -> SandboxSpec {
    SandboxSpec {
        hostname: hostname.to_string(),
        net,
        files,
        hide: vec![],
        env: vec![("TAPNET_TEST".into(), "1".into())],
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdio,
    }
}

/// Runs `script` with `sh -c` in the sandbox through `exec_in`; returns
/// its exit code and output (via a file in `dir`, which the sandbox sees as
/// it shares the host's file system).
fn sh_in(pid: i32, dir: &TempDir, script: &str) -> (i32, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let out = dir
        .0
        .join(format!("out-{}", N.fetch_add(1, Ordering::Relaxed)));
    let cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!("{{ {script} ; }} > {} 2>&1", out.display()),
    ];
    let code = sandbox::exec_in(pid, &cmd, &[]).expect("exec_in");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    (code, text)
}

fn sh_ok(pid: i32, dir: &TempDir, script: &str) -> String {
    let (code, out) = sh_in(pid, dir, script);
    assert_eq!(code, 0, "`{script}` failed in the sandbox: {out}");
    out
}

/// Reads one frame from any of `fds` (waiting up to `timeout`) that
/// `want` accepts; frames it rejects are skipped.
fn read_frame(fds: &[OwnedFd], timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536 + VNET];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let mut pfds: Vec<PollFd<'_>> = fds
            .iter()
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        match poll(&mut pfds, PollTimeout::from(ms)) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
        let ready: Vec<usize> = pfds
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
            .map(|(i, _)| i)
            .collect();
        for i in ready {
            match nix::unistd::read(&fds[i], &mut buf) {
                Ok(n) if n >= VNET + 14 && want(&buf[VNET..n]) => return Some(buf[..n].to_vec()),
                Ok(_) => {}
                Err(nix::Error::EAGAIN) => {}
                Err(e) => panic!("read tap queue: {e}"),
            }
        }
    }
}

fn is_arp_request_for(frame: &[u8], ip: Ipv4Addr) -> bool {
    frame.len() >= 42
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 1]
        && frame[38..42] == ip.octets()
}

fn is_icmp_echo_to(frame: &[u8], ip: Ipv4Addr) -> bool {
    frame.len() >= 34 + 8
        && frame[12..14] == [0x08, 0x00]
        && frame[23] == 1
        && frame[30..34] == ip.octets()
        && frame[34] == 8
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A frame with a zeroed virtio-net header in front.
fn with_vnet(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; VNET];
    out.extend_from_slice(frame);
    out
}

fn arp_reply(to_mac: [u8; 6], to_ip: Ipv4Addr, from_mac: [u8; 6], from_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&from_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend_from_slice(&from_mac);
    f.extend_from_slice(&from_ip.octets());
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&to_ip.octets());
    f
}

/// The echo reply to an echo request frame (no vnet header).
fn echo_reply(req: &[u8]) -> Vec<u8> {
    let ihl = usize::from(req[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([req[16], req[17]]));
    let mut f = req[..14 + total].to_vec();
    // Swap MACs and IPs (the IP checksum does not change).
    let (dst, src) = (req[0..6].to_vec(), req[6..12].to_vec());
    f[0..6].copy_from_slice(&src);
    f[6..12].copy_from_slice(&dst);
    let (sip, dip) = (req[26..30].to_vec(), req[30..34].to_vec());
    f[26..30].copy_from_slice(&dip);
    f[30..34].copy_from_slice(&sip);
    let icmp = 14 + ihl;
    f[icmp] = 0;
    f[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
    let c = checksum(&f[icmp..]);
    f[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    f
}

fn write_frame(fd: &OwnedFd, frame: &[u8]) {
    let n = nix::unistd::write(fd, &with_vnet(frame)).expect("write tap queue");
    assert_eq!(n, VNET + frame.len());
}

/// The whole flow, as whoever runs it (root, or rootless in a user ns).
fn flow() {
    require_privileges();
    let dir = TempDir::new("flow");
    let hosts = "127.0.0.1\tlocalhost\n10.88.0.2\tc1\n";
    let files = vec![
        (dir.file("hosts", hosts), PathBuf::from("/etc/hosts")),
        (dir.file("hostname", "c1\n"), PathBuf::from("/etc/hostname")),
    ];
    let sb = Sandbox::spawn(&spec(
        "c1",
        NetMode::New,
        files,
        &["sleep", "1000"],
        Stdio::Inherit,
    ))
    .expect("spawn sandbox");
    let mut reaper = Reaper(Some(sb.pid));
    let pid = sb.pid;
    let target = NetTarget::Pid(pid);

    let taps = vec![
        TapConfig {
            name: "eth0".into(),
            mac: MAC0,
            mtu: 1400,
            addr: Some("10.88.0.2/24".parse().expect("cidr")),
            default_gateway: Some(GW0),
            addr6: None,
            default_gateway6: None,
            dns_route: None,
            noarp: false,
            default_dev: false,
            default_dev6: false,
            link_local6: None,
        },
        TapConfig {
            name: "eth1".into(),
            mac: MAC1,
            mtu: 1500,
            addr: Some("10.89.0.2/16".parse().expect("cidr")),
            default_gateway: None,
            addr6: None,
            default_gateway6: None,
            dns_route: None,
            noarp: false,
            default_dev: false,
            default_dev6: false,
            link_local6: None,
        },
    ];
    let fds = sandbox::create_taps(&target, &taps, 2).expect("create_taps");
    assert_eq!(fds.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2]);

    // Creating an existing TAP fails with one clear line, and leaves the
    // first one alone.
    let err = sandbox::create_taps(&target, &taps[..1], 1).expect_err("duplicate eth0");
    assert_eq!(
        format!("{err:#}"),
        format!("create tap eth0 in /proc/{pid}/ns/net: File exists")
    );

    let running = sb.start().expect("start");
    assert_eq!(running.pid, pid);

    // Configuration seen from inside.
    let link0 = sh_ok(pid, &dir, "ip -o link show dev eth0");
    assert!(link0.contains("mtu 1400"), "{link0}");
    assert!(link0.contains("link/ether 02:42:0a:58:00:02"), "{link0}");
    assert!(link0.contains(",UP"), "{link0}");
    let addr0 = sh_ok(pid, &dir, "ip -o -4 addr show dev eth0");
    assert!(
        addr0.contains("inet 10.88.0.2/24 brd 10.88.0.255"),
        "{addr0}"
    );
    let link1 = sh_ok(pid, &dir, "ip -o link show dev eth1");
    assert!(
        link1.contains("mtu 1500") && link1.contains("link/ether 02:42:0a:59:00:02"),
        "{link1}"
    );
    let addr1 = sh_ok(pid, &dir, "ip -o -4 addr show dev eth1");
    assert!(addr1.contains("inet 10.89.0.2/16"), "{addr1}");
    let routes = sh_ok(pid, &dir, "ip -4 route show");
    assert!(
        routes.contains("default via 10.88.0.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("10.89.0.0/16 dev eth1"), "{routes}");
    let lo = sh_ok(pid, &dir, "ip -o link show dev lo");
    assert!(lo.contains("LOOPBACK,UP"), "{lo}");
    let tapinfo = sh_ok(pid, &dir, "ip -d link show dev eth0");
    assert!(
        tapinfo.contains("tun type tap") && tapinfo.contains("multi_queue"),
        "{tapinfo}"
    );
    assert!(tapinfo.contains("persist on"), "{tapinfo}");

    // Hostname and bind-mounted files.
    assert_eq!(sh_ok(pid, &dir, "hostname"), "c1\n");
    assert_eq!(sh_ok(pid, &dir, "cat /etc/hosts"), hosts);
    assert_eq!(sh_ok(pid, &dir, "cat /etc/hostname"), "c1\n");
    assert_eq!(sh_in(pid, &dir, "exit 7").0, 7);

    // Frames: a ping from inside arrives as ARP on an eth0 queue (with the
    // 12-byte vnet header in front); we answer ARP and the echo request
    // through the queue fds, and ping succeeds.
    let ping = std::thread::spawn(move || {
        let cmd: Vec<String> = ["ping", "-q", "-c", "1", "-W", "5", "10.88.0.1"]
            .map(String::from)
            .to_vec();
        sandbox::exec_in(pid, &cmd, &[])
    });
    let arp = read_frame(&fds[0], Duration::from_secs(5), |f| {
        is_arp_request_for(f, GW0)
    })
    .expect("ARP request on eth0");
    assert_eq!(&arp[..VNET], &[0u8; VNET], "vnet header of an ARP frame");
    assert_eq!(&arp[VNET + 6..VNET + 12], &MAC0, "ARP source MAC");
    write_frame(&fds[0][0], &arp_reply(MAC0, ADDR0, GW_MAC, GW0));
    let echo = read_frame(&fds[0], Duration::from_secs(5), |f| is_icmp_echo_to(f, GW0))
        .expect("ICMP echo request on eth0");
    assert_eq!(
        &echo[VNET..VNET + 6],
        &GW_MAC,
        "echo request goes to the learned MAC"
    );
    write_frame(&fds[0][1], &echo_reply(&echo[VNET..]));
    let ping_code = ping.join().expect("ping thread").expect("exec ping");
    assert_eq!(ping_code, 0, "ping through the TAP did not get its reply");

    // Close every fd: the TAPs stay (persistent) and reopen.
    drop(fds);
    let link0 = sh_ok(pid, &dir, "ip -o link show dev eth0");
    assert!(link0.contains("eth0"), "{link0}");
    let names = vec!["eth0".to_string(), "eth1".to_string()];
    let reopened = sandbox::open_taps(&target, &names, 3).expect("open_taps");
    assert_eq!(
        reopened.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![3, 3]
    );
    // The configuration survived.
    let addr0 = sh_ok(pid, &dir, "ip -o -4 addr show dev eth0");
    assert!(addr0.contains("inet 10.88.0.2/24"), "{addr0}");
    let err = sandbox::open_taps(&target, &["eth9".to_string()], 1).expect_err("missing tap");
    assert_eq!(
        format!("{err:#}"),
        format!("open tap eth9 in /proc/{pid}/ns/net: No such device")
    );

    // Also by path.
    let by_path = NetTarget::Path(PathBuf::from(format!("/proc/{pid}/ns/net")));
    let again = sandbox::open_taps(&by_path, &names[..1], 1).expect("open_taps by path");
    drop(again);
    drop(reopened);

    // Delete (missing names are fine).
    sandbox::delete_taps(&target, &["eth0".to_string(), "eth9".to_string()]).expect("delete_taps");
    let (code, out) = sh_in(pid, &dir, "ip -o link show dev eth0");
    assert_ne!(code, 0, "eth0 still there: {out}");
    sh_ok(pid, &dir, "ip -o link show dev eth1");

    // A second sandbox joining the first one's network (container:NAME).
    let joined = Sandbox::spawn(&spec(
        "c2",
        NetMode::Join(pid),
        Vec::new(),
        &[
            "sh",
            "-c",
            "ip -o -4 addr show dev eth1 | grep -q 10.89.0.2 && test \"$(hostname)\" = c2",
        ],
        Stdio::Inherit,
    ))
    .expect("spawn joined sandbox");
    let mut reaper2 = Reaper(Some(joined.pid));
    let code = joined
        .start()
        .expect("start joined")
        .wait()
        .expect("wait joined");
    reaper2.0 = None;
    assert_eq!(
        code, 0,
        "the joined sandbox does not see eth1 or has the wrong hostname"
    );

    // Signals map to 128+sig.
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("kill sandbox");
    assert_eq!(running.wait().expect("wait"), 128 + libc::SIGTERM);
    reaper.0 = None;
}

#[test]
fn sandbox_and_taps() {
    flow();
}

#[test]
fn detached_sandbox_logs_and_exit_code() {
    require_privileges();
    let dir = TempDir::new("log");
    let log = dir.0.join("log");
    let sb = Sandbox::spawn(&spec(
        "c3",
        NetMode::New,
        Vec::new(),
        &["sh", "-c", "echo out; echo err >&2; hostname; echo \"$TAPNET_TEST $PATH\"; read x || echo eof; exit 3"],
        Stdio::Log(log.clone()),
    ))
    .expect("spawn");
    let mut reaper = Reaper(Some(sb.pid));
    let code = sb.start().expect("start").wait().expect("wait");
    reaper.0 = None;
    assert_eq!(code, 3);
    let text = std::fs::read_to_string(&log).expect("read log");
    assert_eq!(
        text,
        format!("out\nerr\nc3\n1 {}\neof\n", sandbox::DEFAULT_PATH),
        "log of the detached sandbox"
    );
}

#[test]
fn errors_are_one_clear_line() {
    require_privileges();
    // A command that does not exist.
    let sb = Sandbox::spawn(&spec(
        "c4",
        NetMode::New,
        Vec::new(),
        &["/nonexistent/cmd"],
        Stdio::Inherit,
    ))
    .expect("spawn");
    let mut reaper = Reaper(Some(sb.pid));
    let err = sb
        .start()
        .err()
        .expect("exec of a missing command must fail");
    reaper.0 = None; // start() reaped it.
    let msg = format!("{err:#}");
    assert!(
        msg.contains("exec /nonexistent/cmd: No such file or directory"),
        "{msg}"
    );
    // A bind mount of a missing file.
    let err = Sandbox::spawn(&spec(
        "c5",
        NetMode::New,
        vec![(
            PathBuf::from("/nonexistent/hosts"),
            PathBuf::from("/etc/hosts"),
        )],
        &["true"],
        Stdio::Inherit,
    ))
    .err()
    .expect("missing bind source must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("bind-mount /nonexistent/hosts over /etc/hosts"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    // A namespace that does not exist.
    let err = sandbox::create_taps(
        &NetTarget::Path(PathBuf::from("/nonexistent/netns")),
        &[],
        1,
    )
    .expect_err("missing netns");
    assert_eq!(
        format!("{err:#}"),
        "join /nonexistent/netns: open /nonexistent/netns: No such file or directory (os error 2)"
    );
}

/// Copies `src` into `dir` with mode 0755 (the build tree may not be
/// reachable by another user).
fn copy_exe(src: &Path, dir: &TempDir) -> PathBuf {
    let dst = dir.0.join(src.file_name().expect("file name"));
    std::fs::copy(src, &dst).expect("copy executable");
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
        .expect("chmod executable");
    dst
}

/// As root: runs [`rootless_inner`] as the unprivileged user `tapnettest`
/// (made by `.ci/run` with `useradd -m tapnettest`). Not root: the other
/// tests already run rootless, so this runs the flow directly.
#[test]
fn rootless_as_tapnettest() {
    if !nix::unistd::geteuid().is_root() {
        flow();
        return;
    }
    let user = nix::unistd::User::from_name("tapnettest").expect("look up user");
    assert!(
        user.is_some(),
        "user tapnettest is missing: useradd -m tapnettest"
    );
    let mode = std::fs::metadata("/dev/net/tun")
        .expect("/dev/net/tun")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o006,
        0o006,
        "rootless TAPs need /dev/net/tun to be mode 0666 (chmod 0666 /dev/net/tun)"
    );
    let dir = TempDir::new("bin");
    let me = copy_exe(&std::env::current_exe().expect("current_exe"), &dir);
    let tapnet = copy_exe(Path::new(env!("CARGO_BIN_EXE_tapnet")), &dir);
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=tapnettest",
            "--regid=tapnettest",
            "--init-groups",
            "--",
        ])
        .arg(&me)
        .args([
            "--exact",
            "rootless_inner",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TAPNET_TEST_EXE", &tapnet)
        .env("TMPDIR", "/tmp")
        .current_dir("/")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("setpriv (util-linux) is needed for the rootless test")
        }
        Err(e) => panic!("run setpriv: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "rootless flow as tapnettest failed:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "the rootless flow did not run:\n{text}"
    );

    root_enters_rootless_namespaces();
}

/// As root: a TAP in (and `exec_in` into) namespaces that an unprivileged
/// user made with `unshare --map-root-user`.
fn root_enters_rootless_namespaces() {
    sandbox::set_helper_exe(tapnet_exe());
    let dir = TempDir::new("userns");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777))
        .expect("chmod temp dir");
    let ready = dir.0.join("ready");
    let script = format!(
        "hostname inner && touch {} && exec sleep 100",
        ready.display()
    );
    let mut child = std::process::Command::new("setpriv")
        .args([
            "--reuid=tapnettest",
            "--regid=tapnettest",
            "--init-groups",
            "--",
        ])
        .args([
            "unshare",
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "--uts",
            "sh",
            "-c",
            &script,
        ])
        .current_dir("/")
        .spawn()
        .expect("spawn setpriv unshare");
    let pid = i32::try_from(child.id()).expect("pid");
    let mut reaper = Reaper(Some(pid));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "the unprivileged namespace did not come up"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("setpriv unshare exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let target = NetTarget::Pid(pid);
    let tap = TapConfig {
        name: "eth0".into(),
        mac: MAC0,
        mtu: 1500,
        addr: Some("10.88.0.2/24".parse().expect("cidr")),
        default_gateway: Some(GW0),
        addr6: None,
        default_gateway6: None,
        dns_route: None,
        noarp: false,
        default_dev: false,
        default_dev6: false,
        link_local6: None,
    };
    let fds = sandbox::create_taps(&target, &[tap], 1).expect("create_taps into a rootless netns");
    assert_eq!(fds.len(), 1);
    let out = sh_ok(
        pid,
        &dir,
        "echo $(id -u) $(hostname); ip -o -4 addr show dev eth0",
    );
    assert!(out.starts_with("0 inner\n"), "{out}");
    assert!(out.contains("inet 10.88.0.2/24"), "{out}");
    drop(fds);
    let again = sandbox::open_taps(&target, &["eth0".to_string()], 2).expect("reopen as root");
    drop(again);
    sandbox::delete_taps(&target, &["eth0".to_string()]).expect("delete as root");
    reaper.0 = None;
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = child.wait();
}

/// A `run -d` sandbox keeps running after the process that started it
/// exits (no PDEATHSIG): [`detached_parent_inner`] starts one and exits.
#[test]
fn detached_sandbox_outlives_its_parent() {
    require_privileges();
    let dir = TempDir::new("orphan");
    let log = dir.0.join("log");
    let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            "detached_parent_inner",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TAPNET_TEST_LOG", &log)
        .env("TAPNET_TEST_EXE", tapnet_exe())
        .output()
        .expect("run the parent");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "parent failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.split_once("SANDBOX ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no SANDBOX line: {text}"));
    let (pid, start) = line.split_once(' ').expect("pid and start time");
    let pid: i32 = pid.parse().expect("pid");
    let start: u64 = start.parse().expect("start time");
    // Kill it on failure, only if it is still the process we started.
    struct Orphan(i32, u64);
    impl Drop for Orphan {
        fn drop(&mut self) {
            if sandbox::process_start_time(self.0) == Some(self.1) {
                let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
            }
        }
    }
    let _orphan = Orphan(pid, start);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text == "started\nstill-alive\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the detached sandbox died with its parent; log: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "run by detached_sandbox_outlives_its_parent"]
fn detached_parent_inner() {
    require_privileges();
    let log = PathBuf::from(std::env::var_os("TAPNET_TEST_LOG").expect("TAPNET_TEST_LOG"));
    let sb = Sandbox::spawn(&spec(
        "c6",
        NetMode::New,
        Vec::new(),
        &["sh", "-c", "echo started; sleep 1; echo still-alive"],
        Stdio::Log(log),
    ))
    .expect("spawn");
    let pid = sb.pid;
    let running = sb.start().expect("start");
    let start = sandbox::process_start_time(pid).expect("start time");
    println!("SANDBOX {} {start}", running.pid);
    // Exit without waiting, like `tapnet run -d`.
}

/// The flow as an unprivileged user; started by [`rootless_as_tapnettest`].
#[test]
#[ignore = "run as tapnettest by rootless_as_tapnettest"]
fn rootless_inner() {
    assert!(
        !nix::unistd::geteuid().is_root(),
        "rootless_inner must run unprivileged"
    );
    flow();
    detached_sandbox_logs_and_exit_code();
}
