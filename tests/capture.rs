//! `tapnet capture`, `tapnet stats` and `/metrics`, end to end (issue 16):
//! real namespaces, containers that ping and talk TCP, and tshark reading
//! what the daemon wrote.
//!
//! Everything lives in namespaces the tests make (the daemon's private
//! namespace, an "outside" namespace wired to it for the NAT, TEST-NET-2
//! addresses); captures are `tapnet capture` processes killed by PID on
//! drop. Root only (the NAT part wires a veth pair). Programs: tshark,
//! ping, busybox (httpd), dig, curl.

mod ctl_support;

use ctl_support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `tapnet capture` running in the background; killed by PID on drop.
struct Cap {
    child: Child,
    err: PathBuf,
    _dir: TempDir,
}

impl Cap {
    /// `tapnet capture ARGS...` with stdout to `stdout`.
    fn start(d: &Daemon, args: &[&str], stdout: Stdio) -> Cap {
        let dir = TempDir::new();
        let err = dir.0.join("stderr");
        let child = Command::new(BIN)
            .arg("-H")
            .arg(d.host())
            .arg("capture")
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("start tapnet capture");
        Cap {
            child,
            err,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for its exit (at most `secs`); (success, stderr).
    fn wait(&mut self, secs: u64) -> (bool, String) {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.success(), self.stderr());
            }
            assert!(
                Instant::now() < end,
                "tapnet capture did not end: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT (as Ctrl-C), then waits for it to finish the file.
    fn interrupt(&mut self) -> (bool, String) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        self.wait(20)
    }
}

impl Drop for Cap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `f` holds the section header (the capture runs).
fn wait_started(f: &Path, cap: &Cap) {
    let end = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(f).map(|m| m.len()).unwrap_or(0) < 28 {
        assert!(
            Instant::now() < end,
            "capture did not start: {}",
            cap.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tshark -r FILE -T fields -e F...` (and `-Y FILTER`): one Vec per frame.
fn tshark(file: &Path, filter: Option<&str>, fields: &[&str]) -> Vec<Vec<String>> {
    let mut c = Command::new("tshark");
    c.arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=|"]);
    if let Some(f) = filter {
        c.args(["-Y", f]);
    }
    for f in fields {
        c.args(["-e", f]);
    }
    let o = c.output().expect("run tshark (apt-get install tshark)");
    assert!(
        o.status.success(),
        "tshark -r {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// A daemon with network `front` (containers a and b) and the given
/// daemon arguments.
fn world(extra: &[&str]) -> Daemon {
    require_root("tests/capture.rs");
    let d = Daemon::start_with(extra, |_| {});
    d.ok(&["network", "create", "--subnet", "10.61.0.0/24", "front"]);
    d.sleeper("ca", &["front"], &[]);
    d.sleeper("cb", &["front"], &[]);
    d
}

fn ping(d: &Daemon, from: &str, to: &str, n: u32) {
    let o = d.tapnet(&[
        "exec",
        from,
        "--",
        "ping",
        "-c",
        &n.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        to,
    ]);
    assert_eq!(o.code, 0, "ping {to} from {from}: {}{}", o.stdout, o.stderr);
}

#[test]
fn captures_name_interfaces_count_directions_filter_and_stream() {
    let d = world(&[]);
    let b_ip = d.ip_of("cb", "front");
    let files = TempDir::new();
    let f_net = files.0.join("net.pcapng");
    let f_tcp = files.0.join("tcp.pcapng");
    // Two captures at once: a network's ICMP, a container's TCP.
    let mut net = Cap::start(
        &d,
        &[
            "--network",
            "front",
            "-c",
            "8",
            "-w",
            f_net.to_str().unwrap(),
            "icmp",
        ],
        Stdio::null(),
    );
    let mut tcp = Cap::start(
        &d,
        &[
            "--container",
            "ca",
            "-c",
            "6",
            "-w",
            f_tcp.to_str().unwrap(),
            "tcp port 8080",
        ],
        Stdio::null(),
    );
    wait_started(&f_net, &net);
    wait_started(&f_tcp, &tcp);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "front",
        "--",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/etc",
    ]);
    let web = d.ip_of("web", "front");
    ping(&d, "ca", &b_ip, 3);
    retry("the HTTP server in web", Duration::from_secs(10), || {
        let o = d.exec_sh(
            "ca",
            &format!("curl -sf -o /dev/null http://{web}:8080/hostname"),
        );
        (o.code == 0).then_some(()).ok_or(o.stderr)
    });
    let (ok, err) = net.wait(20);
    assert!(ok, "{err}");
    assert!(err.contains("8 frames captured, 0 lost"), "{err}");
    let (ok, err) = tcp.wait(20);
    assert!(ok, "{err}");

    // The network capture: 8 ICMP frames, both ports named, 4 in, 4 out.
    let rows = tshark(
        &f_net,
        None,
        &[
            "frame.interface_name",
            "frame.interface_description",
            "frame.packet_flags_direction",
            "icmp.type",
        ],
    );
    assert_eq!(rows.len(), 8, "{rows:?}");
    assert!(rows.iter().all(|r| r[3] == "8" || r[3] == "0"), "{rows:?}");
    assert!(rows.iter().all(|r| r[1] == "network front"), "{rows:?}");
    let names: std::collections::BTreeSet<_> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["ca/eth0", "cb/eth0"].into(), "{rows:?}");
    let inbound = rows
        .iter()
        .filter(|r| r[2] == "0x00000001" || r[2] == "1")
        .count();
    let outbound = rows
        .iter()
        .filter(|r| r[2] == "0x00000002" || r[2] == "2")
        .count();
    assert_eq!((inbound, outbound), (4, 4), "{rows:?}");

    // The filtered capture: TCP to or from port 8080 only, on a's port.
    let rows = tshark(
        &f_tcp,
        None,
        &["frame.interface_name", "tcp.port", "ip.proto"],
    );
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r[0] == "ca/eth0" && r[2] == "6" && r[1].contains("8080")),
        "{rows:?}"
    );

    // -w - streams into tshark while the capture runs.
    let sh = format!(
        "{BIN} -H {} capture --container ca -c 4 -w - icmp | tshark -r - -T fields -e frame.interface_name",
        d.host()
    );
    let live = Command::new("sh")
        .args(["-c", &sh])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ping(&d, "ca", &b_ip, 4);
    let out = live.wait_with_output().unwrap();
    let lines: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines, ["ca/eth0"; 4], "{out:?}");

    // Text mode: one line per frame.
    let mut text = Cap::start(
        &d,
        &["--container", "ca", "-c", "2", "icmp"],
        Stdio::piped(),
    );
    std::thread::sleep(Duration::from_millis(500));
    ping(&d, "ca", &b_ip, 2);
    let (ok, err) = text.wait(20);
    assert!(ok, "{err}");
    let mut s = String::new();
    use std::io::Read;
    text.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    let lines: Vec<_> = s.lines().collect();
    assert_eq!(lines.len(), 2, "{s}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" ca/eth0 ") && l.contains("ICMP echo")),
        "{s}"
    );

    // A filter libpcap refuses: one line, non-zero exit.
    let o = d.tapnet(&["capture", "-c", "1", "icmp", "and", "and"]);
    assert_ne!(o.code, 0);
    assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("invalid capture filter"), "{}", o.stderr);
    let o = d.tapnet(&["capture", "--container", "nosuch", "-c", "1"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("No such container"), "{}", o.stderr);

    // Stats moved.
    let v = d.stats();
    let port = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == "ca/eth0")
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert!(port["rx_packets"].as_u64().unwrap() >= 10, "{v}");
    assert!(port["tx_bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(port["network"], "front");
    assert!(v["networks"][0]["ports"].as_u64().unwrap() >= 2, "{v}");
    assert!(
        v["workers"][0]["busy_seconds"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    // The busy-poll window (200 µs by default) is spent polling after work.
    assert!(
        v["workers"][0]["spin_seconds"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    let only_b: serde_json::Value =
        serde_json::from_str(&d.ok(&["stats", "--container", "cb", "--format", "json"])).unwrap();
    assert_eq!(only_b["ports"].as_array().unwrap().len(), 1, "{only_b}");
    let table = d.ok(&["stats"]);
    assert!(
        table.contains("ca/eth0") && table.contains("WORKER"),
        "{table}"
    );
}

/// The workers' polling time while `ca` floods `cb` with pings on a
/// crowded machine: small frames, each waiting for the last one's answer.
fn crowded_ping_flood(d: &Daemon) -> f64 {
    let b_ip = d.ip_of("cb", "front");
    ping(d, "ca", &b_ip, 1);
    let (o, spun) = crowded(|| {
        let before = d.spin_seconds();
        let o = d.tapnet(&[
            "exec", "ca", "--", "ping", "-f", "-c", "3000", "-W", "1", &b_ip,
        ]);
        (o, d.spin_seconds() - before)
    });
    assert_eq!(o.code, 0, "ping -f: {}{}", o.stdout, o.stderr);
    spun
}

/// With `--sleep-when-crowded` alone (`always`) a worker stops polling
/// while more threads are runnable than the machine has CPUs, whatever
/// it forwards; by default (`streams`) a ping flood's small frames keep
/// it polling (`tests/nat.rs` has the stream through the NAT that stops
/// it). The test crowds the machine itself (`crowded`).
#[test]
fn a_crowded_machine_stops_polling_only_when_asked() {
    let always = crowded_ping_flood(&world(&["--sleep-when-crowded"]));
    let default = crowded_ping_flood(&world(&[]));
    eprintln!("polling during the flood: {always} s asked, {default} s by default");
    // A few looks pass before the share of crowded ones reaches half: a
    // millisecond or two of polling at most.
    assert!(always < 0.005, "polled {always} s on a crowded machine");
    assert!(
        default > 4.0 * always && default > 0.002,
        "polled {default} s by default, {always} s when asked not to"
    );
    let e = daemon_refuses(&["--sleep-when-crowded", "sometimes"]);
    assert!(
        e.contains("invalid --sleep-when-crowded \"sometimes\": expected never, streams or always"),
        "{e}"
    );
}

/// One TCP stream from ca to cb for 3 s (socat, 1 MiB writes): what the
/// workers polled meanwhile, seconds, and the bytes cb read.
fn stream_between_containers(d: &Daemon) -> (f64, u64) {
    let b_ip = d.ip_of("cb", "front");
    ping(d, "ca", &b_ip, 1);
    let files = TempDir::new();
    let got = files.0.join("got");
    let (a, b) = (pid_of(d, "ca"), pid_of(d, "cb"));
    let rx = Bg::spawn(&[
        "nsenter",
        "-t",
        &b,
        "-n",
        "sh",
        "-c",
        &format!(
            "socat -u -b 1048576 TCP-LISTEN:7400,reuseaddr STDOUT | wc -c >{}.part && mv {0}.part {0}",
            got.display()
        ),
    ]);
    wait_until("the receiver", Duration::from_secs(10), || {
        in_netns_of(&b, "ss -Hltn 'sport = :7400'").contains(":7400")
    });
    let before = d.spin_seconds();
    in_netns_of(
        &a,
        &format!("timeout 3 socat -u -b 1048576 /dev/zero TCP:{b_ip}:7400"),
    );
    let spun = d.spin_seconds() - before;
    wait_until("the receiver's count", Duration::from_secs(10), || {
        got.exists()
    });
    let n = std::fs::read_to_string(&got).unwrap();
    let n = n
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("count {n:?}\n{}", rx.log()));
    (spun, n)
}

/// A worker that forwards a stream between two containers sleeps when
/// idle instead of polling (with its polling a BBR sender fell to two
/// thirds of its rate in some runs; bench/NOTES.md, "The switch's
/// slow TCP mode"); with `--poll-switch-streams` it polls as before. The
/// ping flood above (small frames) keeps it polling either way.
#[test]
fn a_worker_sleeps_while_it_forwards_a_stream_unless_asked_to_poll() {
    let (default, got) = stream_between_containers(&world(&[]));
    let (asked, got_asked) = stream_between_containers(&world(&["--poll-switch-streams"]));
    eprintln!(
        "polling during a stream: {default} s by default ({got} bytes), \
         {asked} s with --poll-switch-streams ({got_asked} bytes)"
    );
    // A stream: far above the 0.8 Gbit/s the worker looks for.
    assert!(
        got > 300_000_000 && got_asked > 300_000_000,
        "{got} / {got_asked} bytes in 3 s"
    );
    // The first millisecond of the stream, before the worker has measured
    // it, its end, and milliseconds slower than a stream (0.1-1.5 ms alone
    // here, 17 ms beside another test's ping flood; polling on, 1.3-1.8 s).
    assert!(default < 0.1, "polled {default} s during a stream");
    assert!(
        asked > 4.0 * default && asked > 0.1,
        "polled {default} s by default during a stream, {asked} s when asked to poll"
    );
}

/// The port of `port`'s row in `tapnet stats --format json`.
fn port_row(d: &Daemon, port: &str) -> serde_json::Value {
    let v = d.stats();
    v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port)
        .unwrap_or_else(|| panic!("no {port} in {v}"))
        .clone()
}

/// The PID of container `c`'s process.
fn pid_of(d: &Daemon, c: &str) -> String {
    d.inspect_container(c)["State"]["Pid"]
        .as_i64()
        .unwrap()
        .to_string()
}

/// Runs `script` with `sh` in the network namespace of process `pid` (a
/// container's, not through the daemon, which a test may have stopped);
/// its stdout.
fn in_netns_of(pid: &str, script: &str) -> String {
    let o = Command::new("nsenter")
        .args(["-t", pid, "-n", "sh", "-c", script])
        .output()
        .expect("run nsenter");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The daemon stopped (SIGSTOP, by its PID) while this lives: resumed on
/// drop, also when the test panics (the daemon's own drop needs it
/// running).
struct Paused(i32);

impl Paused {
    fn new(d: &Daemon) -> Paused {
        Paused::signal(d.pid(), nix::sys::signal::Signal::SIGSTOP);
        Paused(d.pid())
    }

    fn signal(pid: i32, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        Paused::signal(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// `Udp: InDatagrams` and `RcvbufErrors` in the network namespace of
/// process `pid`.
fn udp_counters(pid: &str) -> (u64, u64) {
    let snmp = in_netns_of(pid, "cat /proc/net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let get = |k: &str| {
        let i = names.split_whitespace().position(|n| n == k).unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    (get("InDatagrams"), get("RcvbufErrors"))
}

/// 1000 numbered datagrams wait in the sender's TAP ring while the daemon
/// is stopped, then cross at once: with batched writes (the default) and
/// with one write per frame, every datagram either arrives, in order, or
/// is counted by the receiver's kernel as a full socket buffer's.
#[test]
fn a_burst_crosses_in_order_batched_or_not() {
    for extra in [&[][..], &["--tx-batch", "0"][..]] {
        let d = world(extra);
        let b_ip = d.ip_of("cb", "front");
        ping(&d, "ca", &b_ip, 1);
        let files = TempDir::new();
        let got = files.0.join("got");
        let (a, b) = (pid_of(&d, "ca"), pid_of(&d, "cb"));
        let mut rx = Command::new("nsenter")
            .args(["-t", &b, "-n", "socat", "-u", "UDP-RECV:9"])
            .arg(format!("OPEN:{},creat,append", got.display()))
            .spawn()
            .expect("start socat");
        wait_until("the receiver", Duration::from_secs(10), || {
            in_netns_of(&b, "ss -Hlun 'sport = :9'").contains(":9")
        });
        let (in0, err0) = udp_counters(&b);
        let paused = Paused::new(&d);
        in_netns_of(
            &a,
            &format!(
                "exec bash -c 'exec 3>/dev/udp/{b_ip}/9; for i in $(seq 1000); do echo $i >&3; done'"
            ),
        );
        drop(paused);
        let settled = || {
            let (i, e) = udp_counters(&b);
            i - in0 + e - err0
        };
        wait_until(
            "1000 datagrams accounted for",
            Duration::from_secs(10),
            || settled() >= 1000,
        );
        let (in1, err1) = udp_counters(&b);
        // socat has read what arrived once the file holds that many lines.
        let arrived = in1 - in0;
        let lines = || -> Vec<u64> {
            std::fs::read_to_string(&got)
                .unwrap_or_default()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect()
        };
        wait_until("socat's file", Duration::from_secs(10), || {
            lines().len() as u64 >= arrived
        });
        let _ = rx.kill();
        let _ = rx.wait();
        let seq = lines();
        eprintln!(
            "BURST {extra:?}: arrived {arrived} rcvbuf errors {}",
            err1 - err0
        );
        assert_eq!(arrived + (err1 - err0), 1000, "{extra:?}");
        assert!(arrived >= 100, "{extra:?}: {arrived} arrived");
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "{extra:?}: out of order: {seq:?}"
        );
        assert_eq!(port_row(&d, "ca/eth0")["ring_drops"], 0, "{extra:?}");
    }
}

#[test]
fn ring_drops_show_frames_the_switch_did_not_read() {
    let d = world(&[]);
    let b_ip = d.ip_of("cb", "front");
    // The neighbour is known before the switch stops reading.
    ping(&d, "ca", &b_ip, 1);
    assert_eq!(port_row(&d, "ca/eth0")["ring_drops"], 0);
    let a = pid_of(&d, "ca");
    let in_ca = |script: &str| in_netns_of(&a, script);
    // The daemon stops reading (it is stopped): 3000 datagrams of one
    // flow go to one queue, whose ring holds 2048; the kernel drops the
    // rest there, before any switch counter could see them.
    let paused = Paused::new(&d);
    // UDP ignores the drop's ENOBUFS (no IP_RECVERR), so the sender goes
    // on; ping would stop at the first.
    in_ca(&format!(
        "exec bash -c 'exec 3>/dev/udp/{b_ip}/9; for i in $(seq 3000); do echo x >&3; done'"
    ));
    drop(paused);
    let row = port_row(&d, "ca/eth0");
    let ring = row["ring_drops"]
        .as_u64()
        .unwrap_or_else(|| panic!("{row}"));
    assert!(ring >= 3000 - 2048, "{row}");
    // The same count the container's kernel shows for its interface.
    let link: serde_json::Value =
        serde_json::from_str(&in_ca("ip -s -j link show dev eth0")).expect("ip -j");
    assert_eq!(link[0]["stats64"]["tx"]["dropped"].as_u64(), Some(ring));
    assert_eq!(port_row(&d, "cb/eth0")["ring_drops"], 0);
    let only_a: serde_json::Value =
        serde_json::from_str(&d.ok(&["stats", "--container", "ca", "--format", "json"])).unwrap();
    assert_eq!(only_a["ports"].as_array().unwrap().len(), 1, "{only_a}");
    assert_eq!(
        only_a["ports"][0]["ring_drops"].as_u64(),
        Some(ring),
        "{only_a}"
    );
    // The network's total, the table and the metrics carry it too.
    let v = d.stats();
    assert_eq!(v["networks"][0]["ring_drops"].as_u64(), Some(ring), "{v}");
    let table = d.ok(&["stats"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("ca/eth0"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(table.contains("RING DROPS"), "{table}");
    assert!(line.ends_with(&format!(" {ring}")), "{table}");
}

#[test]
fn drops_carry_their_reasons() {
    let d = world(&[]);
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.62.0.0/24",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "quiet",
    ]);
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.63.0.0/24",
        "--internal",
        "back",
    ]);
    d.sleeper("q1", &["quiet"], &[]);
    d.sleeper("q2", &["quiet"], &[]);
    d.sleeper("cc", &["back"], &[]);
    let files = TempDir::new();
    let f = files.0.join("drops.pcapng");
    let mut cap = Cap::start(&d, &["--drops", "-w", f.to_str().unwrap()], Stdio::null());
    wait_started(&f, &cap);
    let q2 = d.ip_of("q2", "quiet");
    let c_ip = d.ip_of("cc", "back");
    let b_ip = d.ip_of("cb", "front");
    // ICC off.
    let _ = d.tapnet(&["exec", "q1", "--", "ping", "-c", "1", "-W", "1", &q2]);
    // Another network's address, through the gateway: the NAT refuses.
    let _ = d.tapnet(&["exec", "ca", "--", "ping", "-c", "1", "-W", "1", &c_ip]);
    // An internal network: nothing leaves. Its containers have no default
    // route (as Docker's); one added by hand sends the frame to the
    // gateway, which refuses it.
    let _ = d.exec_sh(
        "cc",
        "ip route add default via 10.63.0.1 && ping -c 1 -W 1 198.51.100.2",
    );
    // A spoofed source address.
    let _ = d.exec_sh(
        "ca",
        &format!("ip addr add 10.61.0.99/24 dev eth0 && ping -c 1 -W 1 -I 10.61.0.99 {b_ip}"),
    );
    let (ok, err) = cap.interrupt();
    assert!(ok, "{err}");
    let rows = tshark(&f, None, &["frame.interface_name", "frame.comment"]);
    let all = format!("{rows:?}");
    for (port, reason) in [
        ("q1/eth0", "drop_reason=icc_disabled"),
        ("ca/eth0", "drop_reason=nat:other_network"),
        ("cc/eth0", "drop_reason=nat:internal"),
        ("ca/eth0", "drop_reason=spoofed_"),
    ] {
        assert!(
            rows.iter().any(|r| r[0] == port && r[1].contains(reason)),
            "no {reason} on {port} in {all}\n{err}\n{}",
            d.log()
        );
    }
    // The switch counted them too.
    let v = d.stats();
    let q1 = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == "q1/eth0")
        .unwrap()
        .clone();
    assert!(q1["drops"]["icc_disabled"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["nat"]["drops"]["internal"].as_u64().unwrap() >= 1, "{v}");
}

#[test]
fn nat_frames_and_dns_answers_are_captured_and_metrics_parse() {
    require_root("tests/capture.rs");
    let port = 9100 + (std::process::id() % 500) as u16;
    let addr = format!("127.0.0.1:{port}");
    let d = world(&["--metrics-addr", &addr]);
    let _outside = Outside::connect(d.netns(), &["198.51.100.1/24"], "198.51.100.2/24");
    let gw = d.gateway_of("front");
    let files = TempDir::new();
    let f = files.0.join("nat.pcapng");
    let mut cap = Cap::start(
        &d,
        &[
            "--container",
            "ca",
            "-w",
            f.to_str().unwrap(),
            "icmp or udp port 53",
        ],
        Stdio::null(),
    );
    wait_started(&f, &cap);
    ping(&d, "ca", "198.51.100.2", 2);
    let o = d.tapnet(&[
        "exec",
        "ca",
        "--",
        "dig",
        "+short",
        "+tries=1",
        "+time=5",
        &format!("@{gw}"),
        "cb",
    ]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let (ok, err) = cap.interrupt();
    assert!(ok, "{err}");
    let rows = tshark(
        &f,
        None,
        &[
            "frame.packet_flags_direction",
            "ip.src",
            "icmp.type",
            "udp.srcport",
        ],
    );
    let out = |r: &Vec<String>| r[0] == "0x00000002" || r[0] == "2";
    assert!(
        rows.iter()
            .any(|r| out(r) && r[1] == "198.51.100.2" && r[2] == "0"),
        "no echo reply from the outside (a NAT frame) in {rows:?}"
    );
    assert!(
        rows.iter().any(|r| out(r) && r[3] == "53"),
        "no DNS answer in {rows:?}"
    );

    // /metrics parses and carries the counters.
    let o = d
        .netns()
        .sh(&format!("curl -sS --max-time 5 http://{addr}/metrics"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let m = parse_prometheus(&o.stdout);
    let rx = m
        .iter()
        .find(|(n, l, _)| {
            n == "tapnet_port_rx_packets_total"
                && l.get("container").map(String::as_str) == Some("ca")
                && l.get("interface").map(String::as_str) == Some("eth0")
                && l.get("network").map(String::as_str) == Some("front")
        })
        .unwrap_or_else(|| panic!("{}", o.stdout));
    assert!(rx.2 >= 4.0, "{}", o.stdout);
    // A TAP's ring drops (none here), read in the container's namespace.
    assert!(
        m.iter().any(|(n, l, v)| n == "tapnet_port_ring_drops_total"
            && l.get("container").map(String::as_str) == Some("ca")
            && *v == 0.0),
        "{}",
        o.stdout
    );
    assert!(
        m.iter()
            .any(|(n, l, _)| n == "tapnet_worker_busy_seconds_total" && l.contains_key("worker")),
        "{}",
        o.stdout
    );
    assert!(
        m.iter()
            .any(|(n, l, _)| n == "tapnet_worker_nat_frames_total" && l.contains_key("worker")),
        "{}",
        o.stdout
    );
    assert!(
        m.iter().any(|(n, l, v)| n == "tapnet_dns_queries_total"
            && l.get("result").map(String::as_str) == Some("local")
            && *v >= 1.0),
        "{}",
        o.stdout
    );
    assert!(
        m.iter()
            .any(|(n, _, _)| n == "tapnet_nat_ring_released_bytes_total"),
        "{}",
        o.stdout
    );

    // A bad address: one line, non-zero exit.
    let e = daemon_refuses(&["--metrics-addr", "not-an-address"]);
    assert!(e.contains("invalid --metrics-addr"), "{e}");
}

/// `tapnet daemon ARGS` exits non-zero with one line on stderr, which it
/// returns.
fn daemon_refuses(args: &[&str]) -> String {
    let o = Command::new(BIN).arg("daemon").args(args).output().unwrap();
    assert_ne!(o.status.code(), Some(0), "{args:?}");
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    e
}

/// `--worker-cpus`: each worker thread is pinned where asked, `tapnet
/// stats` says where, and a CPU the daemon may not use is refused before
/// it starts.
#[test]
fn workers_run_on_the_cpus_asked_for() {
    require_root("tests/capture.rs");
    let allowed = tapnet::dataplane::allowed_cpus().unwrap();
    let last = *allowed.last().unwrap();
    // The CPUs each worker thread of the daemon may run on, by worker.
    let threads = |d: &Daemon| -> Vec<(String, String)> {
        let mut t: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
            .unwrap()
            .filter_map(|e| {
                let dir = e.ok()?.path();
                let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
                let comm = comm.trim().strip_prefix("tapnet-worker-")?.to_string();
                let cpus = cpus_allowed(&dir.join("status"))?;
                Some((comm, cpus))
            })
            .collect();
        t.sort();
        t
    };
    let free = tapnet::dataplane::cpu_list(&allowed);
    let last_s = last.to_string();
    for (extra, want) in [
        (
            vec!["--workers", "3", "--worker-cpus", &last_s],
            vec![Some(last); 3],
        ),
        (
            vec!["--workers", "3"],
            (0..3).map(|i| Some(allowed[i % allowed.len()])).collect(),
        ),
        (
            vec!["--workers", "2", "--worker-cpus", "none"],
            vec![None; 2],
        ),
    ] {
        let d = Daemon::start_with(&extra, |_| {});
        let v = d.stats();
        let got: Vec<Option<u64>> = v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["cpu"].as_u64())
            .collect();
        let want_u64: Vec<Option<u64>> = want.iter().map(|c| c.map(|c| c as u64)).collect();
        assert_eq!(got, want_u64, "{extra:?}: {v}");
        let t = threads(&d);
        assert_eq!(t.len(), want.len(), "{extra:?}: {t:?}");
        for ((id, cpus), w) in t.iter().zip(&want) {
            let w = w.map_or(free.clone(), |c| c.to_string());
            assert_eq!(cpus, &w, "{extra:?}: worker {id}");
        }
        let table = d.ok(&["stats"]);
        let row = table
            .lines()
            .skip_while(|l| !l.starts_with("WORKER"))
            .nth(1)
            .unwrap_or_default()
            .to_string();
        // The last two columns: CPU, NAT FRAMES.
        let cells: Vec<&str> = row.split_whitespace().rev().take(2).collect();
        let w = want[0].map_or("-".to_string(), |c| c.to_string());
        assert_eq!(cells.get(1), Some(&w.as_str()), "{extra:?}: {table}");
        assert!(
            cells.first().is_some_and(|c| c.parse::<u64>().is_ok()),
            "{extra:?}: {table}"
        );
        // The containers' processes are not pinned with the workers.
        d.ok(&["network", "create", "--subnet", "10.62.0.0/24", "pinned"]);
        d.sleeper("free", &["pinned"], &[]);
        let status = format!("/proc/{}/status", pid_of(&d, "free"));
        let cpus = cpus_allowed(std::path::Path::new(&status)).unwrap();
        assert_eq!(cpus, free, "{extra:?}: the container's process");
    }

    // A CPU outside the daemon's affinity: one line, non-zero exit,
    // before the daemon makes anything.
    let e = daemon_refuses(&["--worker-cpus", "1023"]);
    assert!(
        e.contains("invalid --worker-cpus: CPU 1023 is not one this process may run on"),
        "{e}"
    );
}

/// `--tap-steering cpu`: the frames a container's process sends to
/// another container are read by the worker pinned to the CPU it sends
/// them on (`rx_packets_by_worker` of its port), and those for the NAT by
/// the NAT's worker, worker 0, from either CPU (`nat_frames`: none handed
/// over from worker 1). Without the program the kernel's flow steering
/// keeps a ping's frames on one worker whatever the CPU (the switch writes
/// the replies on the flow's home worker's queue). What the daemon could
/// not do is refused before it makes anything.
#[test]
fn with_cpu_steering_the_worker_on_the_senders_cpu_reads_its_frames() {
    require_root("tests/capture.rs");
    let allowed = tapnet::dataplane::allowed_cpus().unwrap();
    assert!(
        allowed.len() >= 2,
        "this test needs two CPUs to run on, has {allowed:?}"
    );
    let cpus = format!("{},{}", allowed[0], allowed[1]);
    let d = world(&[
        "--workers",
        "2",
        "--worker-cpus",
        &cpus,
        "--tap-steering",
        "cpu",
    ]);
    let _outside = Outside::connect(d.netns(), &["198.51.100.1/24"], "198.51.100.2/24");
    let cb = d.ip_of("cb", "front");
    // Per worker: the frames read from ca's port, and those given the NAT.
    let counts = || -> (Vec<u64>, Vec<u64>) {
        let v = d.stats();
        let ports = v["ports"].as_array().unwrap();
        let ca = ports.iter().find(|p| p["container"] == "ca").unwrap();
        let per = |a: &serde_json::Value| -> Vec<u64> {
            a.as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap())
                .collect()
        };
        let nat = v["workers"].as_array().unwrap();
        (
            per(&ca["rx_packets_by_worker"]),
            nat.iter()
                .map(|w| w["nat_frames"].as_u64().unwrap())
                .collect(),
        )
    };
    let ping_on = |cpu: usize, to: &str| {
        let o = d.tapnet(&[
            "exec",
            "ca",
            "--",
            "taskset",
            "-c",
            &cpu.to_string(),
            "ping",
            "-c",
            "20",
            "-i",
            "0.05",
            "-W",
            "2",
            to,
        ]);
        assert_eq!(
            o.code, 0,
            "ping {to} on CPU {cpu}: {}{}",
            o.stdout, o.stderr
        );
    };
    let delta =
        |a: &[u64], b: &[u64]| -> Vec<u64> { a.iter().zip(b).map(|(a, b)| a - b).collect() };
    for (worker, cpu) in [(1, allowed[1]), (0, allowed[0]), (1, allowed[1])] {
        let (rx0, nat0) = counts();
        ping_on(cpu, &cb);
        let (rx1, nat1) = counts();
        ping_on(cpu, "198.51.100.2");
        let (rx2, nat2) = counts();
        // The 20 requests each time; the other worker may see a stray
        // frame of the container's kernel (sent wherever its timer ran).
        let (to_cb, to_far) = (delta(&rx1, &rx0), delta(&nat2, &nat1));
        assert!(
            to_cb[worker] >= 20 && to_cb[1 - worker] <= 2,
            "pinging cb on CPU {cpu}: frames read by worker {to_cb:?}, want worker {worker}"
        );
        assert!(
            to_far[0] >= 20 && to_far[1] <= 2,
            "pinging the outside on CPU {cpu}: NAT frames by worker {to_far:?}, want worker 0"
        );
        assert!(delta(&rx2, &rx1).iter().sum::<u64>() >= 20);
        assert_eq!(delta(&nat1, &nat0), [0, 0], "pinging cb");
    }

    // Two workers at least, pinned: one line, non-zero exit.
    let e = daemon_refuses(&["--tap-steering", "cpu", "--workers", "1"]);
    assert!(
        e.contains("--tap-steering cpu needs --workers 2 or more"),
        "{e}"
    );
    let e = daemon_refuses(&[
        "--tap-steering",
        "cpu",
        "--workers",
        "2",
        "--worker-cpus",
        "none",
    ]);
    assert!(e.contains("--tap-steering cpu needs pinned workers"), "{e}");
    let e = daemon_refuses(&["--tap-steering", "sideways"]);
    assert!(e.contains("expected flow or cpu"), "{e}");
    // Without CAP_BPF in the host's user namespace (root of a user
    // namespace of its own, as a rootless daemon is): refused, and its
    // state directory stays empty.
    let dir = TempDir::new();
    let root = dir.0.join("root");
    std::fs::create_dir(&root).unwrap();
    let o = Command::new("unshare")
        .args(["-Urn", BIN, "daemon", "--root"])
        .arg(&root)
        .arg("-H")
        .arg(format!("unix://{}", dir.0.join("sock").display()))
        .args(["--workers", "2", "--tap-steering", "cpu"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("cannot load its eBPF program"), "{e}");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "{e}");
}

/// `Cpus_allowed_list` of a task's `/proc/.../status` file.
fn cpus_allowed(status: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(status).ok()?;
    let l = text
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    Some(l.trim().to_string())
}

/// A small Prometheus text parser: (name, labels, value) per sample;
/// panics on a line it cannot read.
fn parse_prometheus(text: &str) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    let mut v = vec![];
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let mut labels = std::collections::BTreeMap::new();
        let name = match head.split_once('{') {
            None => head.to_string(),
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, r) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    let end = r
                        .find('"')
                        .unwrap_or_else(|| panic!("unterminated label in {line:?}"));
                    labels.insert(k.to_string(), r[..end].to_string());
                    rest = r[end + 1..].trim_start_matches(',');
                }
                n.to_string()
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        v.push((name, labels, value));
    }
    assert!(!v.is_empty(), "no samples in {text:?}");
    v
}

#[test]
fn a_reader_that_stops_reading_does_not_stall_traffic() {
    let d = world(&[]);
    let b_ip = d.ip_of("cb", "front");
    // stdout is a pipe nobody reads while the traffic runs.
    let mut cap = Cap::start(&d, &["-w", "-"], Stdio::piped());
    let mut pipe = cap.child.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let o = d.tapnet(&[
        "exec", "ca", "--", "ping", "-q", "-c", "1500", "-i", "0.002", "-s", "1400", "-W", "2",
        &b_ip,
    ]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    // Loss counts, not timings: every echo answered while the capture
    // was blocked.
    assert!(
        o.stdout.contains(" 0% packet loss"),
        "ping lost packets while the capture's reader was blocked: {}",
        o.stdout
    );
    // Now read, stop, and see what the capture lost.
    let reader = std::thread::spawn(move || {
        let mut b = vec![];
        use std::io::Read;
        let _ = pipe.read_to_end(&mut b);
        b
    });
    let (ok, err) = cap.interrupt();
    assert!(ok, "{err}");
    let bytes = reader.join().unwrap();
    let lost: u64 = err
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no loss count in {err:?}"));
    assert!(lost > 0, "the capture should have lost frames: {err}");
    assert_eq!(isb_ifdrop_sum(&bytes), lost, "{err}");
    // And the file is whole pcapng.
    let p = TempDir::new();
    let f = p.0.join("slow.pcapng");
    std::fs::write(&f, &bytes).unwrap();
    assert!(!tshark(&f, None, &["frame.number"]).is_empty());
}

/// The sum of `isb_ifdrop` over the Interface Statistics Blocks of a
/// little-endian pcapng stream.
fn isb_ifdrop_sum(b: &[u8]) -> u64 {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let (mut i, mut sum) = (0, 0);
    while i + 12 <= b.len() {
        let (t, len) = (u32_at(i), u32_at(i + 4) as usize);
        if t == 5 {
            let mut o = i + 20;
            while o + 4 <= i + len - 4 {
                let code = u16::from_le_bytes([b[o], b[o + 1]]);
                let olen = u16::from_le_bytes([b[o + 2], b[o + 3]]) as usize;
                if code == 0 {
                    break;
                }
                if code == 5 {
                    sum += u64::from_le_bytes(b[o + 4..o + 12].try_into().unwrap());
                }
                o += 4 + ((olen + 3) & !3);
            }
        }
        i += len.max(12);
    }
    sum
}

/// The research loop of the README: record a network with `tapnet
/// capture`, write its topology, replay the recording with `tapnet
/// replay`, compare. The frames the switch sent to each port in the replay
/// are the frames the capture saw leave on that port.
#[test]
fn a_capture_replays_through_tapnet_replay() {
    let d = world(&[]);
    let b_ip = d.ip_of("cb", "front");
    let files = TempDir::new();
    let rec = files.0.join("rec.pcapng");
    let mut cap = Cap::start(
        &d,
        &["--network", "front", "-w", rec.to_str().unwrap()],
        Stdio::null(),
    );
    wait_started(&rec, &cap);
    ping(&d, "ca", &b_ip, 3);
    // The capture's copy of a frame reaches the file through the daemon's
    // writer and the CLI, which may trail ping's exit: stop it once the
    // file holds the six echo frames leaving ports (a partial last block
    // reads as "not yet"), so that the stop does not race the last of
    // them.
    wait_until(
        "the six echo frames in the file",
        Duration::from_secs(10),
        || {
            std::fs::read(&rec)
                .ok()
                .and_then(|b| tapnet_switch::pcapng::read(&b).ok())
                .is_some_and(|c| {
                    c.packets
                        .iter()
                        .filter(|p| {
                            p.data.len() > 23
                                && p.data[12..14] == [8, 0]
                                && p.data[23] == 1
                                && p.flags & 3 == tapnet_switch::pcapng::EPB_OUTBOUND
                        })
                        .count()
                        >= 6
                })
        },
    );
    let (ok, err) = cap.interrupt();
    assert!(ok, "{err}");

    let net = d.inspect_network("front");
    let ipam = &net["IPAM"]["Config"][0];
    let mut topo = format!(
        "[[network]]\nname = \"front\"\nsubnet = {}\ngateway = {}\n",
        ipam["Subnet"], ipam["Gateway"]
    );
    for c in ["ca", "cb"] {
        let ep = &d.inspect_container(c)["NetworkSettings"]["Networks"]["front"];
        topo += &format!(
            "[[port]]\nname = \"{c}/eth0\"\nnetwork = \"front\"\nmac = {}\nip = {}\n",
            ep["MacAddress"], ep["IPAddress"]
        );
    }
    let topo_file = files.0.join("topology.toml");
    std::fs::write(&topo_file, &topo).unwrap();
    let out = files.0.join("out.pcapng");
    let o = Command::new(BIN)
        .args(["replay", "--topology"])
        .arg(&topo_file)
        .arg(&rec)
        .arg("-w")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tapnet replay: {}\n{topo}",
        String::from_utf8_lossy(&o.stderr)
    );

    use tapnet_switch::pcapng;
    // ICMP frames per port name, sorted: what left each port.
    let icmp = |file: &Path, outbound_only: bool| {
        let cap = pcapng::read(&std::fs::read(file).unwrap()).unwrap();
        let mut by_port: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
        for p in cap.packets {
            let is_icmp = p.data.len() > 23 && p.data[12..14] == [8, 0] && p.data[23] == 1;
            if is_icmp && (!outbound_only || p.flags & 3 == pcapng::EPB_OUTBOUND) {
                by_port
                    .entry(p.interface_name.unwrap_or_default())
                    .or_default()
                    .push(p.data);
            }
        }
        by_port.values_mut().for_each(|v| v.sort());
        by_port
    };
    let recorded = icmp(&rec, true);
    let replayed = icmp(&out, false);
    assert_eq!(
        recorded.get("cb/eth0").map(Vec::len),
        Some(3),
        "3 echo requests left toward cb: {recorded:?}"
    );
    assert_eq!(recorded.get("ca/eth0").map(Vec::len), Some(3));
    assert_eq!(replayed, recorded, "replay differs from the recording");
}
