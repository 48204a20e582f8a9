//! macvlan networks on a parent interface, end to end (issue 20).
//!
//! Topology, all made here: the daemon runs in its private namespace; a
//! veth pair wires it to an "other machine" namespace: `tnout0`, the
//! daemon's end, has no address and is the networks' parent; `eth0` in the
//! other machine holds the segment's router address (TEST-NET-1,
//! 192.0.2.1/24). The other machine pings the containers, serves files to
//! them and fetches files from them. For VLANs (this kernel has no 802.1Q
//! module) the other machine is a second tapnet host on the same veth
//! pair, and tshark on its end checks the 802.1Q tags on the wire.
//! Every process is killed by PID and every namespace removed on drop,
//! also when a test fails.
//!
//! The embedded DNS on macvlan and ipvlan networks (answered by the
//! switch at 169.254.0.53) is checked with dig, forwarding against a
//! dnsmasq this test starts in the daemon's namespace.
//!
//! Root only. Programs: ping, curl, busybox (httpd), tshark, dig, dnsmasq.

mod ctl_support;
mod rootless_support;

use ctl_support::*;
use std::time::Duration;

/// The router of the untagged segment (the other machine's `eth0`).
const ROUTER: &str = "192.0.2.1";
const SUBNET: &str = "192.0.2.0/24";

/// A daemon, the other machine wired to it and its HTTP server.
/// Fields drop in order: server, other machine, daemon, files.
struct World {
    _servers: Vec<Bg>,
    other: Outside,
    d: Daemon,
    files: TempDir,
}

impl World {
    fn new(extra: &[&str]) -> World {
        require_root("tests/macvlan.rs");
        let d = Daemon::start_with(extra, |_| {});
        let other = Outside::connect(d.netns(), &[], &format!("{ROUTER}/24"));
        let files = TempDir::new();
        std::fs::write(files.0.join("page"), "from-the-other-machine\n").unwrap();
        big_file(&files.0.join("big"));
        let www = files.0.display().to_string();
        let servers = vec![other
            .ns
            .spawn(&["busybox", "httpd", "-f", "-p", "80", "-h", &www])];
        World {
            _servers: servers,
            other,
            d,
            files,
        }
    }

    /// `tapnet run -d --name NAME --network NET -- busybox httpd` serving
    /// the test's files on :8080.
    fn server(&self, name: &str, net: &str) {
        let www = self.files.0.display().to_string();
        self.d.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            net,
            "--",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            &www,
        ]);
    }
}

/// 4 MiB of a known pattern: a TCP stream of many segments (super-frames
/// across the parent).
fn big_file(p: &std::path::Path) {
    let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
    let data: Vec<u8> = line.iter().copied().cycle().take(4 << 20).collect();
    std::fs::write(p, data).unwrap();
}

fn sha(p: &std::path::Path) -> String {
    let o = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Pings `to` from container `c` until one answer comes (a fresh
/// container may race its own start).
fn ping_ok(d: &Daemon, c: &str, to: &str) {
    retry(
        &format!("ping {to} from {c}"),
        Duration::from_secs(15),
        || {
            let o = d.exec_sh(c, &format!("ping -c 1 -W 1 {to}"));
            (o.code == 0)
                .then_some(())
                .ok_or(format!("{}{}", o.stdout, o.stderr))
        },
    );
}

/// The container's MAC on `net`.
fn mac_of(d: &Daemon, c: &str, net: &str) -> String {
    d.inspect_container(c)["NetworkSettings"]["Networks"][net]["MacAddress"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Two containers on one macvlan network: each reaches the other machine
/// (ping, TCP both ways, 4 MiB each way: offloads through the parent) with
/// its own MAC, and the other container directly; the segment's router is
/// their default gateway.
#[test]
fn macvlan_containers_on_the_segment() {
    let w = World::new(&[]);
    let d = &w.d;
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        SUBNET,
        "--gateway",
        ROUTER,
        "--ip-range",
        "192.0.2.128/25",
        "--aux-address",
        "r2=192.0.2.129",
        "-o",
        "parent=tnout0",
        "m",
    ]);
    let n = d.inspect_network("m");
    assert_eq!(n["Driver"], "macvlan");
    assert_eq!(n["Options"]["parent"], "tnout0");
    w.server("c1", "m");
    d.sleeper("c2", &["m"], &[]);
    let (ip1, ip2) = (d.ip_of("c1", "m"), d.ip_of("c2", "m"));
    for ip in [&ip1, &ip2] {
        assert!(ip.starts_with("192.0.2.1"), "{ip} outside the ip-range");
        assert_ne!(ip, "192.0.2.129", "aux address allocated");
    }
    // Containers -> the other machine, and each other.
    ping_ok(d, "c1", ROUTER);
    ping_ok(d, "c2", &ip1);
    // The other machine -> containers: each with its own MAC on the wire.
    retry(
        "the other machine pings c2",
        Duration::from_secs(10),
        || {
            let o = w.other.ns.sh(&format!("ping -c 1 -W 1 {ip2}"));
            (o.code == 0).then_some(()).ok_or(o.stdout)
        },
    );
    let neigh = w
        .other
        .ns
        .sh_ok(&format!("ip neigh show {ip1}; ip neigh show {ip2}"));
    assert!(neigh.contains(&mac_of(d, "c1", "m")), "{neigh}");
    assert!(neigh.contains(&mac_of(d, "c2", "m")), "{neigh}");
    // The default route is the segment's router.
    let routes = d.exec_sh("c2", "ip route").stdout;
    assert!(
        routes.contains(&format!("default via {ROUTER}")),
        "{routes}"
    );
    // TCP: a container fetches from the other machine, the other machine
    // from a container, 4 MiB each.
    let body = d
        .exec_sh(
            "c2",
            &format!("curl -sS --max-time 10 http://{ROUTER}/page"),
        )
        .stdout;
    assert_eq!(body, "from-the-other-machine\n");
    let got = w.files.0.join("got-from-other");
    let o = d.exec_sh(
        "c2",
        &format!(
            "curl -sS --max-time 30 -o {} http://{ROUTER}/big",
            got.display()
        ),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(sha(&got), sha(&w.files.0.join("big")));
    let got = w.files.0.join("got-from-c1");
    w.other.ns.sh_ok(&format!(
        "curl -sS --max-time 30 -o {} http://{ip1}:8080/big",
        got.display()
    ));
    assert_eq!(sha(&got), sha(&w.files.0.join("big")));
    // Between the two containers too.
    let body = d
        .exec_sh(
            "c2",
            &format!("curl -sS --max-time 10 http://{ip1}:8080/page"),
        )
        .stdout;
    assert_eq!(body, "from-the-other-machine\n");
    // Containers still get /etc/hosts.
    assert!(d.exec_sh("c1", "cat /etc/hosts").stdout.contains(&ip1));
    // The parent is a port of the network in `tapnet stats`, its
    // counters moved both ways; a frame of the segment for no container
    // is counted as parent_not_for_us.
    w.other.ns.sh_ok(
        "ip neigh replace 192.0.2.77 lladdr 02:00:00:00:00:77 dev eth0 && ping -c 2 -W 1 192.0.2.77 || true",
    );
    let parent = retry("the parent's drop", Duration::from_secs(10), || {
        let v: serde_json::Value =
            serde_json::from_str(&d.ok(&["stats", "--network", "m", "--format", "json"])).unwrap();
        let p = v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == "parent:tnout0")
            .cloned()
            .ok_or(v.to_string())?;
        (p["drops"]["parent_not_for_us"].as_u64() >= Some(2))
            .then_some(p.clone())
            .ok_or(p.to_string())
    });
    assert!(parent["rx_packets"].as_u64().unwrap() > 100, "{parent}");
    assert!(parent["tx_packets"].as_u64().unwrap() > 100, "{parent}");
}

/// With two workers the parent's sockets form a fanout group (one per
/// worker): flows from the segment spread over the workers and every
/// frame still reaches its container once (4 MiB of TCP each way, pings).
#[test]
fn macvlan_with_two_workers() {
    let w = World::new(&["--workers", "2"]);
    let d = &w.d;
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        SUBNET,
        "--gateway",
        ROUTER,
        "-o",
        "parent=tnout0",
        "m",
    ]);
    w.server("c1", "m");
    d.sleeper("c2", &["m"], &[]);
    let ip1 = d.ip_of("c1", "m");
    ping_ok(d, "c2", ROUTER);
    ping_ok(d, "c2", &ip1);
    let big = sha(&w.files.0.join("big"));
    for i in 0..3 {
        let got = w.files.0.join(format!("got-{i}"));
        w.other.ns.sh_ok(&format!(
            "curl -sS --max-time 30 -o {} http://{ip1}:8080/big",
            got.display()
        ));
        assert_eq!(sha(&got), big);
        let got = w.files.0.join(format!("got-c2-{i}"));
        let o = d.exec_sh(
            "c2",
            &format!(
                "curl -sS --max-time 30 -o {} http://{ROUTER}/big",
                got.display()
            ),
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(sha(&got), big);
    }
    let o = w.other.ns.sh(&format!("ping -c 5 -i 0.2 {ip1}"));
    assert!(o.stdout.contains(" 0% packet loss"), "{}", o.stdout);
    assert!(!o.stdout.contains("DUP"), "{}", o.stdout);
}

/// Two tapnet hosts on one segment: `tnout0` in the first daemon's
/// namespace and `peer0` in the second's are the two ends of a veth pair
/// (this kernel has no 802.1Q module: the other machine is a tapnet host
/// too, and neither side has a kernel VLAN device).
struct TwoHosts {
    h1: Daemon,
    h2: Daemon,
    files: TempDir,
}

impl TwoHosts {
    fn new() -> TwoHosts {
        require_root("tests/macvlan.rs");
        let h1 = Daemon::start();
        let h2 = Daemon::start();
        h1.netns().sh_ok(&format!(
            "ip link add tnout0 type veth peer name peer0 netns {} && ip link set tnout0 up",
            h2.netns().name
        ));
        h2.netns().sh_ok("ip link set peer0 up");
        let files = TempDir::new();
        std::fs::write(files.0.join("page"), "page\n").unwrap();
        big_file(&files.0.join("big"));
        TwoHosts { h1, h2, files }
    }

    fn server(&self, d: &Daemon, name: &str, net: &str) {
        let www = self.files.0.display().to_string();
        d.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            net,
            "--",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            &www,
        ]);
    }
}

/// `-o parent=IFACE.10` and `.20` on both hosts: tapnet tags the frames
/// itself (tshark on the wire sees VLAN 10 for one network's containers
/// and 20 for the other's), containers of one VLAN reach each other
/// across the hosts (ping, 4 MiB of TCP each way: super-frames with a
/// pushed tag), and the two VLANs of one parent do not see each other's
/// frames.
#[test]
fn macvlan_vlans_are_tagged_and_isolated() {
    let t = TwoHosts::new();
    let (h1, h2) = (&t.h1, &t.h2);
    for (d, parent, range) in [(h1, "tnout0", None), (h2, "peer0", Some("128/25"))] {
        for vid in ["10", "20"] {
            let subnet = format!("10.{vid}.0.0/24");
            let mut args = vec![
                "network".to_string(),
                "create".into(),
                "-d".into(),
                "macvlan".into(),
                "--subnet".into(),
                subnet,
                "-o".into(),
                format!("parent={parent}.{vid}"),
            ];
            if let Some(r) = range {
                args.extend(["--ip-range".into(), format!("10.{vid}.0.{r}")]);
            }
            args.push(format!("v{vid}"));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            d.ok(&a);
        }
    }
    // No kernel VLAN device on either side.
    let links = h1.netns().sh_ok("ip -o link show") + &h2.netns().sh_ok("ip -o link show");
    assert!(
        !links.contains("tnout0.10") && !links.contains("peer0.10"),
        "{links}"
    );
    // a, b on the first host (VLAN 10, 20); x, y on the second.
    t.server(h1, "ca", "v10");
    h1.sleeper("cb", &["v20"], &[]);
    t.server(h2, "cx", "v10");
    h2.sleeper("cy", &["v20"], &[]);
    let (ipa, ipb) = (h1.ip_of("ca", "v10"), h1.ip_of("cb", "v20"));
    let (ipx, ipy) = (h2.ip_of("cx", "v10"), h2.ip_of("cy", "v20"));
    // The tags on the wire, seen from the second host's end.
    let mut cap = h2.netns().spawn(&[
        "tshark",
        "-i",
        "peer0",
        "-n",
        "-l",
        "-f",
        "vlan and icmp",
        "-T",
        "fields",
        "-e",
        "vlan.id",
        "-e",
        "ip.src",
        "-e",
        "eth.src",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    cap.assert_running();
    ping_ok(h1, "ca", &ipx);
    ping_ok(h1, "cb", &ipy);
    ping_ok(h2, "cx", &ipa);
    let (mac_a, mac_b) = (mac_of(h1, "ca", "v10"), mac_of(h1, "cb", "v20"));
    let seen = retry("tshark's lines", Duration::from_secs(10), || {
        let l = cap.log();
        (l.contains(&mac_a) && l.contains(&mac_b))
            .then_some(l.clone())
            .ok_or(l)
    });
    let tagged = |vid: &str, ip: &str, mac: &str| {
        seen.lines()
            .any(|l| l.starts_with(&format!("{vid}\t{ip}\t{mac}")))
    };
    assert!(tagged("10", &ipa, &mac_a), "{seen}");
    assert!(tagged("20", &ipb, &mac_b), "{seen}");
    assert!(tagged("10", &ipx, &mac_of(h2, "cx", "v10")), "{seen}");
    for l in seen.lines().filter(|l| l.contains(&mac_a)) {
        assert!(l.starts_with("10\t"), "a's frame outside VLAN 10: {seen}");
    }
    drop(cap);
    // TCP across the hosts through the tags, both ways.
    let big = sha(&t.files.0.join("big"));
    for (d, c, ip, out) in [(h2, "cx", &ipa, "got-x"), (h1, "ca", &ipx, "got-a")] {
        let got = t.files.0.join(out);
        let o = d.exec_sh(
            c,
            &format!(
                "curl -sS --max-time 30 -o {} http://{ip}:8080/big",
                got.display()
            ),
        );
        assert_eq!(o.code, 0, "{c}: {}", o.stderr);
        assert_eq!(sha(&got), big, "{c}");
    }
    // Isolation: a (VLAN 10) and y (VLAN 20) treat each other's subnet as
    // on-link and ARP for each other directly; nothing crosses VLANs.
    assert_eq!(
        h1.exec_sh("ca", "ip route add 10.20.0.0/24 dev eth0").code,
        0
    );
    assert_eq!(
        h2.exec_sh("cy", "ip route add 10.10.0.0/24 dev eth0").code,
        0
    );
    let o = h1.exec_sh("ca", &format!("ping -c 2 -W 1 {ipy}"));
    assert_ne!(o.code, 0, "a reached y across VLANs: {}", o.stdout);
    let o = h2.exec_sh("cy", &format!("ping -c 2 -W 1 {ipa}"));
    assert_ne!(o.code, 0, "y reached a across VLANs: {}", o.stdout);
    // ... while each VLAN still works.
    ping_ok(h1, "ca", &ipx);
    ping_ok(h2, "cy", &ipb);
}

/// Bad `network create -d macvlan` options: one line each, nothing made.
#[test]
fn macvlan_bad_options_are_refused() {
    let w = World::new(&[]);
    let d = &w.d;
    let before = d.network_names();
    let base = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = vec![
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "192.0.2.0/24",
            "--gateway",
            ROUTER,
        ];
        a.extend_from_slice(extra);
        a.push("bad");
        a
    };
    for (extra, needle) in [
        (&["-o", "parent=nope0"][..], "nope0 was not found"),
        (&["-o", "parent=nope0.10"][..], "nope0 was not found"),
        (
            &["-o", "parent=lo"][..],
            "loopback interface is not a valid macvlan parent",
        ),
        (
            &["-o", "parent=tnout0.5000"][..],
            "between 1-4094, received: 5000",
        ),
        (&["-o", "parent=tnout0.1.2"][..], "name.vlan_id"),
        (
            &["-o", "parent=tnout0", "-o", "macvlan_mode=vepa"][..],
            "only 'bridge'",
        ),
        (
            &["-o", "parent=tnout0", "-o", "macvlan_mode=zz"][..],
            "'zz' is not valid",
        ),
        (
            &["-o", "parent=tnout0", "-o", "foo=bar"][..],
            "unknown option foo",
        ),
        (&["-o", "parent=tnout0", "--internal"][..], "has no parent"),
    ] {
        let line = d.fails(&base(extra));
        assert!(line.contains(needle), "{extra:?}: {line}");
    }
    assert_eq!(d.network_names(), before);
    // One network per parent (and VLAN).
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.30.0.0/24",
        "-o",
        "parent=tnout0.30",
        "first",
    ]);
    let line = d.fails(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.31.0.0/24",
        "-o",
        "parent=tnout0.30",
        "second",
    ]);
    assert!(
        line.contains("\"first\" is already using parent interface tnout0.30"),
        "{line}"
    );
    d.ok(&["network", "rm", "first"]);
    assert_eq!(d.network_names(), before);
    // The MTU: the parent's by default (Docker's), never above it.
    d.netns().sh_ok("ip link set tnout0 mtu 1400");
    let line = d.fails(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.32.0.0/24",
        "-o",
        "parent=tnout0",
        "-o",
        "com.docker.network.driver.mtu=9000",
        "big",
    ]);
    assert!(
        line.contains("MTU 9000 is larger than parent tnout0's (1400)"),
        "{line}"
    );
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.32.0.0/24",
        "-o",
        "parent=tnout0",
        "mtu",
    ]);
    assert_eq!(
        d.inspect_network("mtu")["Options"]["com.docker.network.driver.mtu"],
        "1400"
    );
    d.sleeper("small", &["mtu"], &[]);
    let link = d.exec_sh("small", "ip link show eth0").stdout;
    assert!(link.contains("mtu 1400"), "{link}");
    d.ok(&["rm", "-f", "small"]);
    d.ok(&["network", "rm", "mtu"]);
    // The parent's sockets are closed with the network: a new one opens.
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.30.0.0/24",
        "-o",
        "parent=tnout0.30",
        "again",
    ]);
    d.ok(&["network", "rm", "again"]);
}

/// Without CAP_NET_RAW over the parent's namespace (a root daemon whose
/// bounding set lacks it): one clear line, nothing made.
#[test]
fn macvlan_without_cap_net_raw_is_one_clear_line() {
    require_root("tests/macvlan.rs");
    let ns = Netns::new();
    ns.sh_ok("ip link add tnout0 type veth peer name tnpeer0 && ip link set tnout0 up");
    let dir = TempDir::new();
    let sock = dir.0.join("tapnet.sock");
    let host = format!("unix://{}", sock.display());
    let root = dir.0.join("root").display().to_string();
    let mut daemon = ns.spawn(&[
        "setpriv",
        "--bounding-set",
        "-net_raw",
        BIN,
        "daemon",
        "--workers",
        "1",
        "--root",
        &root,
        "-H",
        &host,
        "--docker-plugin",
        "none",
    ]);
    retry("the daemon's socket", Duration::from_secs(20), || {
        daemon.assert_running();
        std::os::unix::net::UnixStream::connect(&sock)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let cli = |args: &[&str]| {
        Out::from(
            std::process::Command::new(BIN)
                .args(["-H", &host])
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let o = cli(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        SUBNET,
        "-o",
        "parent=tnout0",
        "m",
    ]);
    assert_ne!(o.code, 0);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("needs CAP_NET_RAW"), "{}", o.stderr);
    let ls = cli(&["network", "ls", "-q"]);
    assert_eq!(ls.stdout.lines().count(), 3, "{}", ls.stdout);
    // Without a parent nothing needs the capability.
    let o = cli(&[
        "network", "create", "-d", "macvlan", "--subnet", SUBNET, "local",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// ipvlan (l2) on the same kind of segment: every container carries the
/// parent's MAC (the other machine's neighbour table shows it for each
/// container address), the switch tells them apart by address: ping and
/// TCP both ways with the other machine, and between the containers.
#[test]
fn ipvlan_l2_containers_share_the_parents_mac() {
    let w = World::new(&[]);
    let d = &w.d;
    d.ok(&[
        "network",
        "create",
        "-d",
        "ipvlan",
        "--subnet",
        SUBNET,
        "--gateway",
        ROUTER,
        "-o",
        "parent=tnout0",
        "-o",
        "ipvlan_mode=l2",
        "iv",
    ]);
    let parent_mac = d
        .netns()
        .sh_ok("cat /sys/class/net/tnout0/address")
        .trim()
        .to_string();
    w.server("c1", "iv");
    d.sleeper("c2", &["iv"], &[]);
    let (ip1, ip2) = (d.ip_of("c1", "iv"), d.ip_of("c2", "iv"));
    assert_eq!(mac_of(d, "c1", "iv"), parent_mac);
    assert_eq!(mac_of(d, "c2", "iv"), parent_mac);
    ping_ok(d, "c1", ROUTER);
    ping_ok(d, "c2", &ip1);
    retry(
        "the other machine pings c2",
        Duration::from_secs(10),
        || {
            let o = w.other.ns.sh(&format!("ping -c 1 -W 1 {ip2}"));
            (o.code == 0).then_some(()).ok_or(o.stdout)
        },
    );
    let neigh = w
        .other
        .ns
        .sh_ok(&format!("ip neigh show {ip1}; ip neigh show {ip2}"));
    assert_eq!(neigh.matches(&parent_mac).count(), 2, "{neigh}");
    let big = sha(&w.files.0.join("big"));
    let got = w.files.0.join("got-from-other");
    let o = d.exec_sh(
        "c2",
        &format!(
            "curl -sS --max-time 30 -o {} http://{ROUTER}/big",
            got.display()
        ),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(sha(&got), big);
    let got = w.files.0.join("got-from-c1");
    w.other.ns.sh_ok(&format!(
        "curl -sS --max-time 30 -o {} http://{ip1}:8080/big",
        got.display()
    ));
    assert_eq!(sha(&got), big);
    let body = d
        .exec_sh(
            "c2",
            &format!("curl -sS --max-time 10 http://{ip1}:8080/page"),
        )
        .stdout;
    assert_eq!(body, "from-the-other-machine\n");
    // Bad modes and the other flags are refused in one line, nothing made.
    for (o, needle) in [
        ("ipvlan_mode=zz", "'zz' is not valid"),
        ("ipvlan_flag=private", "only 'bridge'"),
    ] {
        let line = d.fails(&[
            "network",
            "create",
            "-d",
            "ipvlan",
            "--subnet",
            "10.40.0.0/24",
            "-o",
            o,
            "bad",
        ]);
        assert!(line.contains(needle), "{o}: {line}");
    }
    // One network per parent, whatever the driver.
    let line = d.fails(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.41.0.0/24",
        "-o",
        "parent=tnout0",
        "bad",
    ]);
    assert!(
        line.contains("\"iv\" is already using parent interface tnout0"),
        "{line}"
    );
    assert!(!d.network_names().contains(&"bad".to_string()));
}

/// ipvlan `l3`: the containers share the parent's MAC, do no ARP and have
/// a device default route (no gateway); they reach each other directly
/// and everything else through the daemon's namespace, which routes their
/// packets out of the parent with their own source address. The other
/// machine reaches them with a route to their subnet via the daemon
/// namespace's address on the parent: ping, and TCP both ways (4 MiB:
/// TSO super-frames segmented before the routed send). A destination
/// with no route fails cleanly; bad options are refused in one line.
#[test]
fn ipvlan_l3_routes_through_the_daemons_namespace() {
    const HOST: &str = "192.0.2.2";
    const L3NET: &str = "10.77.0.0/24";
    let mut w = World::new(&[]);
    let d = &w.d;
    d.netns()
        .sh_ok(&format!("ip addr add {HOST}/24 dev tnout0"));
    w.other
        .ns
        .sh_ok(&format!("ip route add {L3NET} via {HOST}"));
    d.ok(&[
        "network",
        "create",
        "-d",
        "ipvlan",
        "--subnet",
        L3NET,
        "-o",
        "parent=tnout0",
        "-o",
        "ipvlan_mode=l3",
        "l3",
    ]);
    let n = d.inspect_network("l3");
    assert_eq!(n["Options"]["ipvlan_mode"], "l3", "{n}");
    assert_eq!(n["Options"]["parent"], "tnout0", "{n}");
    let parent_mac = d
        .netns()
        .sh_ok("cat /sys/class/net/tnout0/address")
        .trim()
        .to_string();
    w.server("c1", "l3");
    d.sleeper("c2", &["l3"], &[]);
    let (ip1, ip2) = (d.ip_of("c1", "l3"), d.ip_of("c2", "l3"));
    assert_eq!(mac_of(d, "c2", "l3"), parent_mac);
    // Docker's l3 endpoint: no gateway, a device default route, NOARP.
    let ep = &d.inspect_container("c2")["NetworkSettings"]["Networks"]["l3"];
    assert_eq!(ep["Gateway"], "", "{ep}");
    let routes = d.exec_sh("c2", "ip route").stdout;
    assert!(routes.contains("default dev eth0"), "{routes}");
    assert!(!routes.contains("via"), "{routes}");
    let link = d.exec_sh("c2", "ip link show eth0").stdout;
    assert!(link.contains("NOARP"), "{link}");
    // Out through the daemon's namespace, and between the containers.
    ping_ok(d, "c2", ROUTER);
    ping_ok(d, "c2", &ip1);
    // The embedded DNS answers here too (its address is not routed out).
    dig_is(d, "c2", "c1", &ip1);
    ping_ok(d, "c2", "c1");
    retry(
        "the other machine pings c2",
        Duration::from_secs(10),
        || {
            let o = w.other.ns.sh(&format!("ping -c 1 -W 1 {ip2}"));
            (o.code == 0).then_some(()).ok_or(o.stdout)
        },
    );
    // The containers' own addresses are seen on the segment (no NAT),
    // from the host's MAC: the other machine never learns them.
    let neigh = w.other.ns.sh_ok("ip neigh show");
    assert!(!neigh.contains(&ip2), "{neigh}");
    let big = sha(&w.files.0.join("big"));
    let got = w.files.0.join("got-from-other");
    let o = d.exec_sh(
        "c2",
        &format!(
            "curl -sS --max-time 30 -o {} http://{ROUTER}/big",
            got.display()
        ),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(sha(&got), big);
    let got = w.files.0.join("got-from-c1");
    w.other.ns.sh_ok(&format!(
        "curl -sS --max-time 30 -o {} http://{ip1}:8080/big",
        got.display()
    ));
    assert_eq!(sha(&got), big);
    let body = d
        .exec_sh(
            "c2",
            &format!("curl -sS --max-time 10 http://{ip1}:8080/page"),
        )
        .stdout;
    assert_eq!(body, "from-the-other-machine\n");
    // The router port carried the containers' way out.
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["stats", "--network", "l3", "--format", "json"])).unwrap();
    let router = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == "router:tnout0")
        .cloned()
        .unwrap_or_else(|| panic!("no router port: {v}"));
    assert!(router["tx_packets"].as_u64().unwrap() > 100, "{router}");
    // No route there: the ping fails cleanly, the network keeps working.
    let o = d.exec_sh("c2", "ping -c 2 -W 1 203.0.113.9");
    assert_ne!(o.code, 0, "{}", o.stdout);
    ping_ok(d, "c2", ROUTER);
    // Bad options: one line each, nothing made.
    for (opts, needle) in [
        (&["ipvlan_mode=l4"][..], "'l4' is not valid"),
        (
            &["ipvlan_mode=l3", "parent=tnout0.7"][..],
            "no interface tnout0.7",
        ),
    ] {
        let mut args = vec![
            "network",
            "create",
            "-d",
            "ipvlan",
            "--subnet",
            "10.78.0.0/24",
        ];
        for o in opts {
            args.extend(["-o", o]);
        }
        args.push("bad");
        let line = d.fails(&args);
        assert!(line.contains(needle), "{opts:?}: {line}");
    }
    assert!(!d.network_names().contains(&"bad".to_string()));
    // A restarted daemon opens the router port again.
    w.d.kill9();
    w.d.spawn();
    ping_ok(&w.d, "c2", ROUTER);
    retry(
        "the other machine pings c2 after the restart",
        Duration::from_secs(10),
        || {
            let o = w.other.ns.sh(&format!("ping -c 1 -W 1 {ip2}"));
            (o.code == 0).then_some(()).ok_or(o.stdout)
        },
    );
}

/// A macvlan network and its containers survive a `kill -9` of the daemon:
/// the restarted daemon opens the parent again and the other machine
/// reaches the same container (same address, same MAC); the embedded DNS
/// answers its names again.
#[test]
fn macvlan_survives_a_daemon_restart() {
    let mut w = World::new(&[]);
    w.d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        SUBNET,
        "--gateway",
        ROUTER,
        "-o",
        "parent=tnout0.7",
        "m",
    ]);
    w.d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.50.0.0/24",
        "-o",
        "parent=tnout0",
        "plain",
    ]);
    w.d.sleeper("c1", &["m"], &[]);
    let (ip1, mac1) = (w.d.ip_of("c1", "m"), mac_of(&w.d, "c1", "m"));
    // Traffic is checked on the untagged network (the other machine has
    // no VLAN device); the tagged one is restored beside it.
    w.d.sleeper("c2", &["plain"], &[]);
    w.d.sleeper("c3", &["plain"], &[]);
    w.other.ns.sh_ok("ip addr add 10.50.0.1/24 dev eth0");
    let ip2 = w.d.ip_of("c2", "plain");
    retry(
        "the other machine pings c2",
        Duration::from_secs(10),
        || {
            let o = w.other.ns.sh(&format!("ping -c 1 -W 1 {ip2}"));
            (o.code == 0).then_some(()).ok_or(o.stdout)
        },
    );
    w.d.kill9();
    w.d.spawn();
    assert_eq!(w.d.ip_of("c1", "m"), ip1);
    assert_eq!(mac_of(&w.d, "c1", "m"), mac1);
    w.other.ns.sh_ok("ip neigh flush dev eth0");
    retry(
        "the other machine pings c2 again",
        Duration::from_secs(15),
        || {
            let o = w.other.ns.sh(&format!("ping -c 1 -W 1 {ip2}"));
            (o.code == 0).then_some(()).ok_or(o.stdout)
        },
    );
    ping_ok(&w.d, "c2", "10.50.0.1");
    // The embedded DNS knows the names again.
    dig_is(&w.d, "c3", "c2", &ip2);
    // Both networks are still there, and removable (parents closed).
    w.d.ok(&["rm", "-f", "c1", "c2", "c3"]);
    w.d.ok(&["network", "rm", "m", "plain"]);
}

/// Rootless: as an ordinary user, a daemon in a namespace the user does
/// not own refuses a parent in one line (no CAP_NET_RAW there); in the
/// user's own user and network namespace a macvlan network on a veth made
/// there works (ping, TCP). See `tests/rootless_macvlan.sh`.
#[test]
fn macvlan_rootless_in_the_users_own_namespace() {
    let run = rootless_support::run_as_user_with("macvlan", "tests/rootless_macvlan.sh", |ns| {
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success(), "set up the rootless namespace {ns}");
    });
    assert!(
        run.status.success() && run.text.contains("ROOTLESS MACVLAN OK"),
        "rootless script: {}\n{}\n--- trace\n{}",
        run.status,
        run.text,
        std::fs::read_to_string(run.work.join("trace")).unwrap_or_default(),
    );
}

/// A dual-stack macvlan network: containers get their IPv6 address of the
/// segment's prefix and a default route via the segment's IPv6 router;
/// Neighbor Discovery with the other machine passes through the parent;
/// the embedded DNS answers AAAA.
#[test]
fn macvlan_dual_stack() {
    let w = World::new(&[]);
    w.other
        .ns
        .sh_ok("ip addr add 2001:db8:c0::1/64 dev eth0 nodad");
    w.d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--ipv6",
        "--subnet",
        SUBNET,
        "--gateway",
        ROUTER,
        "--subnet",
        "2001:db8:c0::/64",
        "--gateway",
        "2001:db8:c0::1",
        "-o",
        "parent=tnout0",
        "mv6",
    ]);
    w.d.sleeper("m6", &["mv6"], &["--ip6", "2001:db8:c0::20"]);
    w.d.sleeper("m7", &["mv6"], &[]);
    let routes = w.d.exec_sh("m6", "ip -6 route").stdout;
    assert!(
        routes.contains("default via 2001:db8:c0::1 dev eth0"),
        "{routes}"
    );
    let ping6 = |c: &str, to: &str| ping6_ok(&w.d, c, to);
    ping6("m6", "2001:db8:c0::1");
    let m7 = w.d.ip6_of("m7", "mv6");
    ping6("m6", &m7);
    // The embedded DNS (over IPv4, at 169.254.0.53) answers AAAA, and
    // ping -6 by name works.
    dig_is(&w.d, "m6", "AAAA m7", &m7);
    ping6("m7", "m6");
    // The other machine reaches the container, and knows its own MAC.
    w.other.ns.sh_ok("ping -6 -c 1 -W 2 2001:db8:c0::20");
    let neigh = w.other.ns.sh_ok("ip -6 neigh show 2001:db8:c0::20");
    assert!(neigh.contains(&mac_of(&w.d, "m6", "mv6")), "{neigh}");
}

/// The embedded DNS's service address on macvlan/ipvlan networks
/// (`tapnet_switch::segment::DNS_ADDR`).
const DNS_ADDR: &str = "169.254.0.53";

/// The test's own upstream resolver: dnsmasq on 127.0.0.1:5353 of the
/// daemon's namespace (its `--dns-upstream`), answering `upstream.test`
/// with 198.51.100.7 (TEST-NET-2: data only, never contacted).
fn upstream_resolver(d: &Daemon) -> Bg {
    d.netns().lo_up();
    d.netns().spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        "--listen-address=127.0.0.1",
        "--port=5353",
        "--address=/upstream.test/198.51.100.7",
    ])
}

/// `dig +short` from container `c`, retried until it answers `want` (a
/// fresh container may race its own start).
fn dig_is(d: &Daemon, c: &str, args: &str, want: &str) {
    retry(
        &format!("dig {args} from {c}"),
        Duration::from_secs(15),
        || {
            let o = d.exec_sh(c, &format!("dig +short +tries=1 +time=3 {args}"));
            (o.stdout.trim() == want)
                .then_some(())
                .ok_or(format!("{}{}", o.stdout, o.stderr))
        },
    );
}

/// Two containers on segment network `net` find each other through the
/// embedded DNS at DNS_ADDR: by name, alias, NAME.NETWORK, over UDP and
/// TCP, and ping by name; other names are forwarded to the test's
/// resolver; resolv.conf names only DNS_ADDR, with ndots:0, and the
/// container routes DNS_ADDR on its interface.
fn segment_dns(d: &Daemon, net: &str) {
    d.sleeper("c1", &[net], &["--network-alias", "web"]);
    d.sleeper("c2", &[net], &[]);
    let ip1 = d.ip_of("c1", net);
    let resolv = d.exec_sh("c2", "cat /etc/resolv.conf").stdout;
    assert!(
        resolv.contains(&format!("nameserver {DNS_ADDR}\n")),
        "{resolv}"
    );
    assert_eq!(resolv.matches("nameserver").count(), 1, "{resolv}");
    assert!(resolv.contains("options ndots:0"), "{resolv}");
    let routes = d.exec_sh("c2", "ip route").stdout;
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with(&format!("{DNS_ADDR} dev eth0")) && l.contains("scope link")),
        "{routes}"
    );
    dig_is(d, "c2", "c1", &ip1);
    dig_is(d, "c2", "web", &ip1);
    dig_is(d, "c2", &format!("c1.{net}"), &ip1);
    dig_is(d, "c2", "+tcp web", &ip1);
    dig_is(d, "c1", "c2", &d.ip_of("c2", net));
    let full = d.exec_sh("c2", "dig +tries=1 +time=3 c1").stdout;
    assert!(full.contains(&format!("SERVER: {DNS_ADDR}#53")), "{full}");
    ping_ok(d, "c2", "c1");
    ping_ok(d, "c1", "web");
    // Not local: forwarded to the daemon's upstream (the test's dnsmasq),
    // over UDP and TCP.
    dig_is(d, "c2", "upstream.test", "198.51.100.7");
    dig_is(d, "c2", "+tcp upstream.test", "198.51.100.7");
    d.ok(&["rm", "-f", "c1", "c2"]);
}

/// The embedded DNS on macvlan and ipvlan (l2) networks, as Docker gives
/// it on user-defined networks: names of the network's containers, their
/// aliases, forwarding of other names; on an `--internal` network (no
/// parent) local names only (other names REFUSED). Queries are answered
/// by the switch at 169.254.0.53; the segment never sees them.
#[test]
fn segment_networks_have_the_embedded_dns() {
    let w = World::new(&["--dns-upstream", "127.0.0.1:5353"]);
    let d = &w.d;
    let _resolver = upstream_resolver(d);
    let create = |driver: &str, name: &str| {
        d.ok(&[
            "network",
            "create",
            "-d",
            driver,
            "--subnet",
            SUBNET,
            "--gateway",
            ROUTER,
            "-o",
            "parent=tnout0",
            name,
        ]);
    };
    create("macvlan", "m");
    segment_dns(d, "m");
    // An internal macvlan network (no parent): local names, no forwarding.
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--internal",
        "--subnet",
        "10.66.0.0/24",
        "mi",
    ]);
    d.sleeper("i1", &["mi"], &[]);
    d.sleeper("i2", &["mi"], &[]);
    dig_is(d, "i2", "i1", &d.ip_of("i1", "mi"));
    let refused = d.exec_sh("i2", "dig +tries=1 +time=3 upstream.test").stdout;
    assert!(refused.contains("status: REFUSED"), "{refused}");
    ping_ok(d, "i2", "i1");
    // On two segment networks: a route to the DNS on each interface (by
    // metric); when the first goes, the other carries the queries.
    d.sleeper("both", &["mi"], &[]);
    d.ok(&["network", "connect", "m", "both"]);
    let routes = d
        .exec_sh("both", &format!("ip route show {DNS_ADDR}"))
        .stdout;
    assert_eq!(routes.lines().count(), 2, "{routes}");
    dig_is(d, "both", "i1", &d.ip_of("i1", "mi"));
    d.ok(&["network", "disconnect", "mi", "both"]);
    dig_is(d, "both", "upstream.test", "198.51.100.7");
    d.ok(&["rm", "-f", "both"]);
    // ipvlan l2 on the same parent, once the macvlan network is gone.
    d.ok(&["network", "rm", "m"]);
    create("ipvlan", "iv");
    segment_dns(d, "iv");
}

/// Pings `to` over IPv6 from container `c` until one answer comes.
fn ping6_ok(d: &Daemon, c: &str, to: &str) {
    retry(
        &format!("ping -6 {to} from {c}"),
        Duration::from_secs(15),
        || {
            let o = d.exec_sh(c, &format!("ping -6 -c 1 -W 1 {to}"));
            (o.code == 0)
                .then_some(())
                .ok_or(format!("{}{}", o.stdout, o.stderr))
        },
    )
}

/// A dual-stack ipvlan (l2) network: every container shares the parent's
/// MAC, so each has its own link-local address (fe80::IPV4, no EUI-64
/// one); the other machine resolves each container's IPv6 address to the
/// parent's MAC and pings it; containers reach the segment's IPv6 router
/// and each other.
#[test]
fn ipvlan_l2_dual_stack() {
    let w = World::new(&[]);
    let d = &w.d;
    w.other
        .ns
        .sh_ok("ip addr add 2001:db8:c0::1/64 dev eth0 nodad");
    d.ok(&[
        "network",
        "create",
        "-d",
        "ipvlan",
        "--ipv6",
        "--subnet",
        SUBNET,
        "--gateway",
        ROUTER,
        "--subnet",
        "2001:db8:c0::/64",
        "--gateway",
        "2001:db8:c0::1",
        "-o",
        "parent=tnout0",
        "iv6",
    ]);
    let parent_mac = d
        .netns()
        .sh_ok("cat /sys/class/net/tnout0/address")
        .trim()
        .to_string();
    d.sleeper("i6", &["iv6"], &["--ip6", "2001:db8:c0::20"]);
    d.sleeper("i7", &["iv6"], &[]);
    let ip6 = d.ip_of("i6", "iv6");
    let ll = {
        let o: Vec<u8> = ip6.split('.').map(|x| x.parse().unwrap()).collect();
        format!(
            "fe80::{:x}:{:x}",
            u16::from_be_bytes([o[0], o[1]]),
            u16::from_be_bytes([o[2], o[3]])
        )
    };
    let addrs = d.exec_sh("i6", "ip -6 addr show dev eth0").stdout;
    assert!(addrs.contains(&format!("{ll}/64")), "{ll}: {addrs}");
    assert_eq!(addrs.matches("fe80::").count(), 1, "{addrs}");
    let routes = d.exec_sh("i6", "ip -6 route").stdout;
    assert!(
        routes.contains("default via 2001:db8:c0::1 dev eth0"),
        "{routes}"
    );
    ping6_ok(d, "i6", "2001:db8:c0::1");
    let i7 = d.ip6_of("i7", "iv6");
    ping6_ok(d, "i6", &i7);
    ping6_ok(d, "i7", &format!("{ll}%eth0"));
    w.other.ns.sh_ok("ping -6 -c 1 -W 2 2001:db8:c0::20");
    w.other.ns.sh_ok(&format!("ping -6 -c 1 -W 2 {i7}"));
    let neigh = w.other.ns.sh_ok(&format!(
        "ip -6 neigh show 2001:db8:c0::20; ip -6 neigh show {i7}"
    ));
    assert_eq!(neigh.matches(&parent_mac).count(), 2, "{neigh}");
}

/// A dual-stack ipvlan l3 network: IPv6 routed as IPv4 is, through the
/// daemon's namespace (its IPv6 router port), with a device default
/// route; the other machine reaches the containers with a route to their
/// prefix via the host; TCP over IPv6 both ways (4 MiB: TCPv6
/// super-frames segmented before the routed send).
#[test]
fn ipvlan_l3_dual_stack() {
    const HOST6: &str = "2001:db8:c0::2";
    let w = World::new(&[]);
    let d = &w.d;
    d.netns().sh_ok(&format!(
        "ip addr add 192.0.2.2/24 dev tnout0 && ip addr add {HOST6}/64 dev tnout0 nodad"
    ));
    w.other.ns.sh_ok(&format!(
        "ip addr add 2001:db8:c0::1/64 dev eth0 nodad && ip route add 10.77.0.0/24 via 192.0.2.2 && ip -6 route add 2001:db8:77::/64 via {HOST6}"
    ));
    d.ok(&[
        "network",
        "create",
        "-d",
        "ipvlan",
        "--ipv6",
        "--subnet",
        "10.77.0.0/24",
        "--subnet",
        "2001:db8:77::/64",
        "-o",
        "parent=tnout0",
        "-o",
        "ipvlan_mode=l3",
        "l3v6",
    ]);
    w.server("s6", "l3v6");
    d.sleeper("t6", &["l3v6"], &[]);
    let (s6, t6) = (d.ip6_of("s6", "l3v6"), d.ip6_of("t6", "l3v6"));
    let routes = d.exec_sh("t6", "ip -6 route").stdout;
    assert!(routes.contains("default dev eth0"), "{routes}");
    let ep = &d.inspect_container("t6")["NetworkSettings"]["Networks"]["l3v6"];
    assert_eq!(ep["IPv6Gateway"], "", "{ep}");
    ping6_ok(d, "t6", "2001:db8:c0::1");
    ping6_ok(d, "t6", &s6);
    retry(
        "the other machine pings t6",
        Duration::from_secs(10),
        || {
            let o = w.other.ns.sh(&format!("ping -6 -c 1 -W 1 {t6}"));
            (o.code == 0).then_some(()).ok_or(o.stdout)
        },
    );
    // IPv4 still routed beside it.
    ping_ok(d, "t6", ROUTER);
    let big = sha(&w.files.0.join("big"));
    let got = w.files.0.join("got6-from-other");
    let o = d.exec_sh(
        "t6",
        &format!(
            "curl -sS --max-time 30 -o {} 'http://[2001:db8:c0::1]/big'",
            got.display()
        ),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(sha(&got), big);
    let got = w.files.0.join("got6-from-s6");
    w.other.ns.sh_ok(&format!(
        "curl -sS --max-time 30 -o {} 'http://[{s6}]:8080/big'",
        got.display()
    ));
    assert_eq!(sha(&got), big);
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["stats", "--network", "l3v6", "--format", "json"])).unwrap();
    let router6 = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == "router6:tnout0")
        .cloned()
        .unwrap_or_else(|| panic!("no IPv6 router port: {v}"));
    assert!(router6["tx_packets"].as_u64().unwrap() > 100, "{router6}");
}
