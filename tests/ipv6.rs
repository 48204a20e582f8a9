//! IPv6 dual-stack networks end to end (issue 20): `network create --ipv6`
//! with Docker's IPAM rules and errors, `run --ip6` / `network connect
//! --ip6`, Docker's JSON, containers talking IPv6 through the switch
//! (Neighbor Discovery and echo answered by the gateway), the embedded
//! DNS (AAAA, ip6.arpa, over IPv6), anti-spoofing,
//! ICC off and isolation, capture, and a daemon restart.
//!
//! Every test runs its own daemon inside its own network namespace.

mod ctl_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctl_support::*;
use serde_json::Value;

fn ping6(d: &Daemon, from: &str, to: &str) -> bool {
    d.tapnet(&["exec", from, "--", "ping", "-6", "-c", "1", "-W", "2", to])
        .code
        == 0
}

fn net_of(d: &Daemon, c: &str, net: &str) -> Value {
    d.inspect_container(c)["NetworkSettings"]["Networks"][net].clone()
}

#[test]
fn dual_stack_networks_follow_dockers_ipam_rules() {
    let d = Daemon::start();
    d.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.70.0.0/24",
        "--subnet",
        "2001:db8:70::/64",
        "--gateway",
        "2001:db8:70::fe",
        "--ip-range",
        "2001:db8:70::100/120",
        "--aux-address",
        "r6=2001:db8:70::101",
        "dual",
    ]);
    let n = d.inspect_network("dual");
    assert_eq!(n["EnableIPv6"], true, "{n}");
    let cfg = n["IPAM"]["Config"].as_array().unwrap().clone();
    assert_eq!(cfg.len(), 2, "{n}");
    assert_eq!(cfg[0]["Subnet"], "10.70.0.0/24");
    assert_eq!(cfg[0]["Gateway"], "10.70.0.1");
    assert_eq!(cfg[1]["Subnet"], "2001:db8:70::/64");
    assert_eq!(cfg[1]["Gateway"], "2001:db8:70::fe");
    assert_eq!(cfg[1]["IPRange"], "2001:db8:70::100/120");
    assert_eq!(cfg[1]["AuxiliaryAddresses"]["r6"], "2001:db8:70::101");

    // Dynamic addresses come from the range, skipping the auxiliary one;
    // --ip6 may be anywhere in the subnet.
    d.sleeper("d1", &["dual"], &[]);
    d.sleeper("d2", &["dual"], &["--ip6", "2001:db8:70::7"]);
    assert_eq!(d.ip6_of("d1", "dual"), "2001:db8:70::100");
    let s = net_of(&d, "d2", "dual");
    assert_eq!(s["GlobalIPv6Address"], "2001:db8:70::7", "{s}");
    assert_eq!(s["GlobalIPv6PrefixLen"], 64, "{s}");
    assert_eq!(s["IPv6Gateway"], "2001:db8:70::fe", "{s}");
    assert_eq!(s["IPAMConfig"]["IPv6Address"], "2001:db8:70::7", "{s}");
    let n = d.inspect_network("dual");
    let eps: Vec<String> = n["Containers"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| e["IPv6Address"].as_str().unwrap().to_string())
        .collect();
    assert!(eps.contains(&"2001:db8:70::7/64".to_string()), "{n}");

    // `network connect --ip6`.
    d.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:71::/64",
        "second",
    ]);
    d.ok(&["network", "connect", "--ip6", "fd00:71::42", "second", "d1"]);
    assert_eq!(d.ip6_of("d1", "second"), "fd00:71::42");
    // Without an IPv6 subnet: a unique-local /64, and compose's option
    // works as --ipv6 does.
    d.ok(&[
        "network",
        "create",
        "-o",
        "com.docker.network.enable_ipv6=true",
        "ula",
    ]);
    let n = d.inspect_network("ula");
    assert_eq!(n["EnableIPv6"], true, "{n}");
    let sub = n["IPAM"]["Config"][1]["Subnet"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sub.starts_with("fd") && sub.ends_with("::/64"), "{n}");

    let before = d.network_names();
    // Each bad request: one line, non-zero, nothing made.
    for (args, want) in [
        (
            vec!["--subnet", "2001:db8:72::/64", "nov6"],
            "IPv6 is not enabled",
        ),
        (
            vec!["--ipv6", "--subnet", "2001:db8:70:0:1::/80", "overlap"],
            "overlaps with network \"dual\"",
        ),
        (
            vec![
                "--ipv6",
                "--subnet",
                "2001:db8:73::/64",
                "--subnet",
                "2001:db8:74::/64",
                "two",
            ],
            "only one IPv6 subnet",
        ),
        (
            vec!["--ipv6", "--subnet", "2001:db8:75::1/64", "noncanon"],
            "should be 2001:db8:75::/64",
        ),
        (
            vec!["--ipv6", "--subnet", "fe80::/64", "linklocal"],
            "link-local",
        ),
        (
            vec![
                "--ipv6",
                "--subnet",
                "2001:db8:76::/64",
                "--gateway",
                "2001:db8:77::1",
                "gwout",
            ],
            "no matching subnet for gateway",
        ),
        (
            vec![
                "--ipv6",
                "--subnet",
                "10.78.0.0/24",
                "--subnet",
                "2001:db8:78::/64",
                "-o",
                "com.docker.network.driver.mtu=1000",
                "smallmtu",
            ],
            "at least 1280",
        ),
        (
            vec!["-d", "ipvlan", "--ipv6", "iv6"],
            "needs the segment's IPv6 --subnet",
        ),
        (
            vec!["-d", "macvlan", "--ipv6", "mv6"],
            "needs the segment's IPv6 --subnet",
        ),
    ] {
        let mut a = vec!["network", "create"];
        a.extend(args.iter().copied());
        let e = d.fails(&a);
        assert!(e.contains(want), "{a:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    assert_eq!(d.network_names(), before, "a failed create left a network");

    d.ok(&["network", "create", "--subnet", "10.79.0.0/24", "v4only"]);
    for (extra, want) in [
        (
            vec!["--network", "v4only", "--ip6", "2001:db8::5"],
            "has no IPv6 subnet",
        ),
        (
            vec!["--network", "dual", "--ip6", "2001:db8:99::5"],
            "not in subnet",
        ),
        (
            vec!["--network", "dual", "--ip6", "2001:db8:70::7"],
            "already in use",
        ),
        (
            vec!["--network", "dual", "--ip6", "2001:db8:70::fe"],
            "reserved",
        ),
        (
            vec!["--network", "dual", "--ip6", "not-an-address"],
            "invalid IPv6 address",
        ),
    ] {
        let mut a = vec!["run", "-d", "--name", "bad"];
        a.extend(extra.iter().copied());
        a.extend(["--", "sleep", "1"]);
        let e = d.fails(&a);
        assert!(e.contains(want), "{a:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    assert!(!d.ok(&["ps", "-a"]).contains("bad"));
}

#[test]
fn containers_talk_ipv6_through_the_switch() {
    let mut d = Daemon::start();
    d.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.80.0.0/24",
        "--subnet",
        "2001:db8:80::/64",
        "six",
    ]);
    d.sleeper("s1", &["six"], &["--hostname", "one"]);
    d.sleeper("s2", &["six"], &[]);
    let a1 = d.ip6_of("s1", "six");
    let a2 = d.ip6_of("s2", "six");
    let o = d.exec_sh(
        "s1",
        "ip -6 addr show dev eth0; ip -6 route; cat /etc/hosts",
    );
    assert!(o.stdout.contains(&format!("{a1}/64")), "{}", o.stdout);
    assert!(
        o.stdout.contains("default via 2001:db8:80::1 dev eth0"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains(&format!("{a1}\tone")), "{}", o.stdout);

    // Neighbor Discovery and echo of the gateway, answered by the switch.
    assert!(ping6(&d, "s1", "2001:db8:80::1"), "{}", d.log());
    let neigh = d.exec_sh("s1", "ip -6 neigh show 2001:db8:80::1").stdout;
    assert!(neigh.contains("lladdr 02:42:0a:50:00:01"), "{neigh}");
    assert!(neigh.contains("router"), "{neigh}");
    // The embedded DNS: AAAA for names with an IPv6 address, PTR in
    // ip6.arpa, and queries to the gateway's IPv6 address.
    let dig = |args: &[&str]| {
        let mut a = vec!["exec", "s1", "--", "dig", "+short", "+tries=1", "+time=5"];
        a.extend(args);
        d.ok(&a).trim().to_string()
    };
    assert_eq!(dig(&["AAAA", "s2"]), a2);
    assert_eq!(dig(&["AAAA", "s2.six"]), a2);
    assert_eq!(dig(&["@2001:db8:80::1", "AAAA", "s2"]), a2);
    // The gateway's link-local address (from its MAC 02:42:0a:50:00:01).
    assert_eq!(dig(&["@fe80::42:aff:fe50:1%eth0", "AAAA", "s2"]), a2);
    assert_eq!(
        dig(&["@2001:db8:80::1", "+tcp", "A", "s2"]),
        d.ip_of("s2", "six")
    );
    assert_eq!(dig(&["-x", &a2]), "s2.six.");
    // Container to container, both ways, and TCP.
    assert!(ping6(&d, "s1", &a2), "{}", d.log());
    assert!(ping6(&d, "s2", &a1));
    let www = TempDir::new();
    std::fs::write(www.0.join("index.html"), "six-ok\n").unwrap();
    let pid = d.ok(&[
        "exec",
        "s2",
        "--",
        "sh",
        "-c",
        &format!(
            "busybox httpd -f -p [::]:8080 -h {} >/dev/null 2>&1 & echo $!",
            www.0.display()
        ),
    ]);
    let _httpd = KillOnDrop(pid.trim().parse().expect("httpd pid"));
    let page = d.ok(&[
        "exec",
        "s1",
        "--",
        "curl",
        "-sS",
        "--retry",
        "5",
        "--retry-connrefused",
        "--retry-delay",
        "1",
        &format!("http://[{a2}]:8080/index.html"),
    ]);
    assert_eq!(page.trim(), "six-ok");

    // The capture shows it.
    let files = TempDir::new();
    let f = files.0.join("six.pcapng");
    let mut cap = Command::new(BIN)
        .args(["-H", &d.host(), "capture", "--container", "s1", "-c", "2"])
        // Echo request and reply only (NDP is ICMPv6 too).
        .args([
            "-w",
            f.to_str().unwrap(),
            "icmp6 and (ip6[40] == 128 or ip6[40] == 129)",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tapnet capture");
    let end = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0) < 28 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ping6(&d, "s1", &a2));
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = cap.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = cap.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.is_some_and(|s| s.success()), "capture did not end");
    let o = Command::new("tshark")
        .arg("-r")
        .arg(&f)
        .args(["-T", "fields", "-e", "ipv6.src", "-e", "icmpv6.type"])
        .output()
        .expect("tshark");
    let rows = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(rows.contains(&format!("{a1}\t128")), "{rows}");
    assert!(rows.contains(&format!("{a2}\t129")), "{rows}");

    // A container taking another address is dropped and counted.
    let o = d.exec_sh(
        "s1",
        &format!("ip addr add 2001:db8:80::666/64 dev eth0 nodad && ping -6 -c 1 -W 1 -I 2001:db8:80::666 {a2}"),
    );
    assert_ne!(o.code, 0, "a spoofed source got through");
    assert!(d.port_drops("s1/eth0", "spoofed_ip") >= 1);

    // State survives a kill -9: same addresses, traffic again.
    d.kill9();
    d.spawn();
    assert_eq!(d.ip6_of("s2", "six"), a2);
    assert!(ping6(&d, "s2", &a1), "no IPv6 after restart\n{}", d.log());
}

/// An endpoint of a network without IPv6 has IPv6 off on its interface,
/// as Docker does: no link-local address, so none of the frames a fresh
/// IPv6 interface sends by itself (Duplicate Address Detection, Router
/// Solicitations, MLD reports), which the switch would flood to every
/// port of the network. The same container's interface on a dual-stack
/// network keeps IPv6, also after a restart of the daemon.
#[test]
fn endpoints_of_ipv4_only_networks_have_no_ipv6() {
    let mut d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.81.0.0/24", "four"]);
    d.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.82.0.0/24",
        "--subnet",
        "2001:db8:82::/64",
        "both",
    ]);
    d.sleeper("f1", &["four"], &[]);
    d.sleeper("f2", &["four"], &[]);
    let v6_of = |d: &Daemon, dev: &str| {
        d.exec_sh(
            "f1",
            &format!("cat /proc/sys/net/ipv6/conf/{dev}/disable_ipv6; ip -6 addr show dev {dev}"),
        )
        .stdout
    };
    assert_eq!(
        v6_of(&d, "eth0").trim(),
        "1",
        "IPv6 on an IPv4-only network"
    );
    let f2 = d.ip_of("f2", "four");
    d.ok(&["exec", "f1", "--", "ping", "-c", "1", "-W", "2", &f2]);

    d.ok(&["network", "connect", "both", "f1"]);
    let eth1 = v6_of(&d, "eth1");
    assert!(eth1.starts_with("0\n"), "{eth1}");
    assert!(eth1.contains(&d.ip6_of("f1", "both")), "{eth1}");
    assert!(ping6(&d, "f1", "2001:db8:82::1"), "{}", d.log());
    assert_eq!(v6_of(&d, "eth0").trim(), "1");

    d.kill9();
    d.spawn();
    assert!(ping6(&d, "f1", "2001:db8:82::1"), "{}", d.log());
    assert_eq!(v6_of(&d, "eth0").trim(), "1");
}

#[test]
fn icc_off_and_isolation_apply_to_ipv6() {
    let d = Daemon::start();
    d.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "2001:db8:81::/64",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "quiet6",
    ]);
    d.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "2001:db8:82::/64",
        "other6",
    ]);
    d.sleeper("q1", &["quiet6"], &[]);
    d.sleeper("q2", &["quiet6"], &[]);
    d.sleeper("o1", &["other6"], &[]);
    let q2 = d.ip6_of("q2", "quiet6");
    let o1 = d.ip6_of("o1", "other6");
    assert!(!ping6(&d, "q1", &q2), "ICC off let IPv6 through");
    assert!(d.port_drops("q1/eth0", "icc_disabled") >= 1);
    assert!(
        ping6(&d, "q1", "2001:db8:81::1"),
        "the gateway is still reachable"
    );
    // Another network's container, through the gateway: never delivered.
    assert!(!ping6(&d, "q1", &o1), "crossed networks");
    assert!(ping6(&d, "o1", "2001:db8:82::1"));
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Outbound IPv6 through the daemon's IPv6 sockets (masqueraded: the
/// outside sees the host's address), ICMPv6 echo, and a published port
/// reaching the container's IPv6 address with the client's own address.
#[test]
fn ipv6_nat_outbound_and_published_ports() {
    require_root("ipv6_nat_outbound_and_published_ports");
    let d = Daemon::start();
    let host = d.netns();
    host.sh_ok("sysctl -qw net.ipv6.conf.all.disable_ipv6=0");
    let outside = Outside::connect(
        host,
        &["2001:db8:ff::1/64 nodad"],
        "2001:db8:ff::2/64 nodad",
    );
    let ns = &outside.ns;
    let _servers = [
        ns.spawn(&[
            "socat",
            "TCP6-LISTEN:80,fork,reuseaddr",
            "SYSTEM:echo from $SOCAT_PEERADDR",
        ]),
        ns.spawn(&["socat", "UDP6-RECVFROM:7,fork", "PIPE"]),
    ];
    d.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.84.0.0/24",
        "--subnet",
        "2001:db8:84::/64",
        "nat6",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "nat6",
        "-p",
        "8080:80",
        "--",
        "socat",
        "TCP6-LISTEN:80,fork,reuseaddr",
        "SYSTEM:echo peer $SOCAT_PEERADDR",
    ]);
    let ctx = || format!("--- daemon log:\n{}", d.log());

    // Outbound TCP, UDP and ping to the outside namespace.
    let got = retry("outbound TCP over IPv6", Duration::from_secs(15), || {
        let o = d.exec_sh(
            "web",
            "socat -t 5 -T 10 - 'TCP6:[2001:db8:ff::2]:80' </dev/null",
        );
        (o.stdout.contains("from"))
            .then(|| o.stdout.clone())
            .ok_or(format!("{} {}{}", o.code, o.stdout, o.stderr))
    });
    assert_eq!(
        bracketed(&got),
        Some("2001:db8:ff::1".parse().unwrap()),
        "the outside must see the host's address: {got}\n{}",
        ctx()
    );
    let echo = d.exec_sh(
        "web",
        "echo hello6 | socat -t 2 -T 10 - 'UDP6:[2001:db8:ff::2]:7'",
    );
    assert_eq!(echo.stdout.trim(), "hello6", "{}\n{}", echo.stderr, ctx());
    assert!(ping6(&d, "web", "2001:db8:ff::2"), "ICMPv6 echo\n{}", ctx());
    // An echo larger than the MTU leaves in IPv6 fragments, which the
    // NAT reassembles.
    let big = d.exec_sh("web", "ping -6 -c 1 -W 3 -s 3000 2001:db8:ff::2");
    assert_eq!(big.code, 0, "{}{}\n{}", big.stdout, big.stderr, ctx());
    // traceroute6: the gateway's IPv6 address answers hop 1 (hop limit
    // 1 expires there), the outside host hop 2.
    let trace = d.exec_sh(
        "web",
        "busybox traceroute6 -n -q 1 -w 3 -m 4 2001:db8:ff::2",
    );
    let hops: Vec<&str> = trace
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        .collect();
    assert_eq!(
        hops,
        ["2001:db8:84::1", "2001:db8:ff::2"],
        "{}{}\n{}\n{}",
        trace.stdout,
        trace.stderr,
        d.ok(&["conntrack", "stats", "--format", "json"]),
        ctx()
    );

    // Published on [::] too, as Docker does on a dual-stack network.
    let ports = d.ok(&["port", "web"]);
    for want in ["80/tcp -> 0.0.0.0:8080", "80/tcp -> [::]:8080"] {
        assert!(ports.lines().any(|l| l.trim() == want), "port web: {ports}");
    }
    // In from an IPv6 client: the container sees the client.
    let got = retry("published port over IPv6", Duration::from_secs(15), || {
        let o = ns.sh("socat -t 5 -T 10 - 'TCP6:[2001:db8:ff::1]:8080' </dev/null");
        (o.stdout.contains("peer"))
            .then(|| o.stdout.clone())
            .ok_or(format!("{} {}{}", o.code, o.stdout, o.stderr))
    });
    assert_eq!(
        bracketed(&got),
        Some("2001:db8:ff::2".parse().unwrap()),
        "the container must see the client's IPv6 address: {got}\n{}",
        ctx()
    );
}

/// The IPv6 address in brackets in `s` (socat's `$SOCAT_PEERADDR`, which
/// it writes in full, `[2001:0db8:...]`).
fn bracketed(s: &str) -> Option<std::net::Ipv6Addr> {
    let (_, rest) = s.split_once('[')?;
    rest.split_once(']')?.0.parse().ok()
}
