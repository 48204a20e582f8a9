//! Published ports, control-plane side: `run -p` binds the host sockets in
//! the daemon (explicit address, the network's `host_binding_ipv4`, or all
//! addresses; random and ranged ports), `tapnet port`/`ps`/`inspect` show
//! the real ports, a taken port fails `run` with Docker's line and leaves
//! nothing behind, ports are freed on `rm -f`/`stop` and bound again after
//! a daemon `kill -9` + restart; `tapnet conntrack` and its errors.
//!
//! The daemon runs in the test's own network namespace, so every socket is
//! bound there; no traffic is sent (relaying is the NAT engine's part).

mod ctl_support;

use ctl_support::*;
use serde_json::{json, Value};

/// `ss -Hl` in the daemon's namespace, TCP or UDP sockets (root only: the
/// rootless variant has no named namespace to look into).
fn listening(d: &Daemon, proto: &str) -> Option<String> {
    let ns = d.ns.as_ref()?;
    let flag = if proto == "udp" { "-Hlun" } else { "-Hltn" };
    let o = ns.exec(&["ss", flag]);
    assert!(o.status.success(), "ss failed");
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Whether `addr` (`127.0.0.1:18080`, `tcp` or `udp`) is bound in the
/// daemon's namespace; `None` when that cannot be looked at.
fn bound(d: &Daemon, addr: &str) -> Option<bool> {
    let (addr, proto) = addr.split_once('/').unwrap_or((addr, "tcp"));
    listening(d, proto).map(|s| s.lines().any(|l| l.split_whitespace().any(|w| w == addr)))
}

/// Waits (briefly: the NAT gateway closes its copy of a socket a moment
/// after the container goes) until `addr` is not bound any more.
fn freed(d: &Daemon, addr: &str) {
    if d.ns.is_some() {
        wait_until(
            &format!("{addr} closed"),
            std::time::Duration::from_secs(3),
            || bound(d, addr) == Some(false),
        );
    }
}

fn names(d: &Daemon) -> String {
    d.ok(&["ps", "-a", "--format", "json"])
}

fn port_lines(d: &Daemon, c: &str) -> Vec<String> {
    d.ok(&["port", c]).lines().map(String::from).collect()
}

#[test]
fn publish_show_conflict_and_free() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.61.0.0/24", "front"]);
    d.sleeper(
        "web",
        &["front"],
        &["-p", "127.0.0.1:18080:80", "-p", "127.0.0.1::53/udp"],
    );
    let lines = port_lines(&d, "web");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1], "80/tcp -> 127.0.0.1:18080");
    let udp = lines[0]
        .strip_prefix("53/udp -> 127.0.0.1:")
        .unwrap_or_else(|| panic!("{lines:?}"));
    let udp: u16 = udp.parse().unwrap();
    assert_ne!(udp, 0);
    assert_eq!(d.ok(&["port", "web", "80"]), "127.0.0.1:18080\n");
    assert_eq!(
        d.ok(&["port", "web", "53/udp"]),
        format!("127.0.0.1:{udp}\n")
    );
    let e = d.fails(&["port", "web", "81/tcp"]);
    assert!(e.contains("81/tcp"), "{e}");
    let e = d.fails(&["port", "web", "http"]);
    assert!(e.contains("http"), "{e}");
    if d.ns.is_some() {
        assert_eq!(bound(&d, "127.0.0.1:18080"), Some(true));
        assert_eq!(bound(&d, &format!("127.0.0.1:{udp}/udp")), Some(true));
    }

    // Docker's shapes.
    let v = d.inspect_container("web");
    assert_eq!(
        v["NetworkSettings"]["Ports"]["80/tcp"],
        json!([{"HostIp": "127.0.0.1", "HostPort": "18080"}])
    );
    assert_eq!(
        v["NetworkSettings"]["Ports"]["53/udp"][0]["HostPort"],
        udp.to_string()
    );
    assert_eq!(
        v["HostConfig"]["PortBindings"]["53/udp"],
        json!([{"HostIp": "127.0.0.1", "HostPort": ""}])
    );
    let ps = d.ok(&["ps"]);
    assert!(ps.contains("127.0.0.1:18080->80/tcp"), "{ps}");
    assert!(ps.contains(&format!("127.0.0.1:{udp}->53/udp")), "{ps}");

    // Taken: Docker's line, and no container left behind; the other port
    // of that run (bound first) is closed again.
    let o = d.tapnet(&[
        "run",
        "-d",
        "--name",
        "web2",
        "--network",
        "front",
        "-p",
        "127.0.0.1:18081:81",
        "-p",
        "127.0.0.1:18080:80",
        "--",
        "sleep",
        "300",
    ]);
    assert_ne!(o.code, 0);
    assert_eq!(
        o.stderr.trim_end(),
        "Error response from daemon: Bind for 127.0.0.1:18080 failed: port is already allocated"
    );
    assert!(!names(&d).contains("web2"), "{}", names(&d));
    freed(&d, "127.0.0.1:18081");
    // All addresses overlap with 127.0.0.1.
    let e = d.fails(&["run", "-d", "-p", "18080:80", "--", "sleep", "300"]);
    assert!(
        e.ends_with("Bind for 0.0.0.0:18080 failed: port is already allocated"),
        "{e}"
    );
    // Twice the same port in one run.
    let e = d.fails(&[
        "run", "-d", "-p", "18082:80", "-p", "18082:81", "--", "sleep", "300",
    ]);
    assert!(
        e.contains("0.0.0.0:18082 failed: port is already allocated"),
        "{e}"
    );
    assert_eq!(
        d.ok(&["ps", "-a", "-q"]).lines().count(),
        1,
        "{}",
        names(&d)
    );
    // The same port on another host address works; TCP and UDP ports are
    // different ports.
    d.sleeper(
        "other",
        &["front"],
        &["-p", "127.0.0.2:18080:80", "-p", "127.0.0.1:18080:80/udp"],
    );
    assert_eq!(
        port_lines(&d, "other"),
        ["80/tcp -> 127.0.0.2:18080", "80/udp -> 127.0.0.1:18080"]
    );

    // rm -f frees the ports: a new container takes them.
    d.ok(&["rm", "-f", "web"]);
    freed(&d, "127.0.0.1:18080");
    d.sleeper("web3", &["front"], &["-p", "127.0.0.1:18080:80"]);
    assert_eq!(port_lines(&d, "web3"), ["80/tcp -> 127.0.0.1:18080"]);
    // stop frees them too, and shows none.
    d.ok(&["stop", "-t", "1", "web3"]);
    assert_eq!(d.ok(&["port", "web3"]), "");
    assert_eq!(
        d.inspect_container("web3")["NetworkSettings"]["Ports"],
        json!({})
    );
    d.sleeper("web4", &["front"], &["-p", "127.0.0.1:18080:80"]);
    assert_eq!(port_lines(&d, "web4"), ["80/tcp -> 127.0.0.1:18080"]);

    // A malformed -p: one line, nothing made.
    let before = names(&d);
    let e = d.fails(&["run", "-d", "-p", "[::1]:80", "--", "true"]);
    assert!(e.contains("[::1]:80"), "{e}");
    assert_eq!(names(&d), before);
}

#[test]
fn random_ranges_default_address_internal_ipv6() {
    let d = Daemon::start();
    if let Some(ns) = &d.ns {
        // For ::1.
        assert!(ns.exec(&["ip", "link", "set", "lo", "up"]).status.success());
    }
    d.ok(&["network", "create", "--subnet", "10.62.0.0/24", "front"]);
    // Random host port on all addresses.
    d.sleeper("rnd", &["front"], &["-p", "80"]);
    let l = port_lines(&d, "rnd");
    assert_eq!(l.len(), 1, "{l:?}");
    let p: u16 = l[0]
        .strip_prefix("80/tcp -> 0.0.0.0:")
        .unwrap_or_else(|| panic!("{l:?}"))
        .parse()
        .unwrap();
    assert_ne!(p, 0);
    if d.ns.is_some() {
        assert_eq!(bound(&d, &format!("0.0.0.0:{p}")), Some(true));
    }

    // Ranges: one to one, then "any free port of the range".
    d.sleeper("rng", &["front"], &["-p", "127.0.0.1:18100-18102:80-82"]);
    assert_eq!(
        port_lines(&d, "rng"),
        [
            "80/tcp -> 127.0.0.1:18100",
            "81/tcp -> 127.0.0.1:18101",
            "82/tcp -> 127.0.0.1:18102"
        ]
    );
    d.sleeper("rng2", &["front"], &["-p", "127.0.0.1:18100-18105:80"]);
    assert_eq!(port_lines(&d, "rng2"), ["80/tcp -> 127.0.0.1:18103"]);
    assert_eq!(
        d.inspect_container("rng2")["HostConfig"]["PortBindings"]["80/tcp"],
        json!([{"HostIp": "127.0.0.1", "HostPort": "18100-18105"}])
    );
    let e = d.fails(&[
        "run",
        "-d",
        "-p",
        "127.0.0.1:18100-18102:80",
        "--",
        "sleep",
        "300",
    ]);
    assert!(
        e.contains("Bind for 127.0.0.1:18100-18102 failed") && e.contains("allocated"),
        "{e}"
    );
    let e = d.fails(&[
        "run",
        "-d",
        "-p",
        "127.0.0.1:18099-18100:80-81",
        "--",
        "sleep",
        "300",
    ]);
    assert!(
        e.ends_with("Bind for 127.0.0.1:18100 failed: port is already allocated"),
        "{e}"
    );
    // The first port of that range was bound, then closed again.
    freed(&d, "127.0.0.1:18099");

    // The network's host_binding_ipv4 is the default host address.
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.63.0.0/24",
        "-o",
        "com.docker.network.bridge.host_binding_ipv4=127.0.0.3",
        "local",
    ]);
    d.sleeper("loc", &["local"], &["-p", "18200:80"]);
    assert_eq!(port_lines(&d, "loc"), ["80/tcp -> 127.0.0.3:18200"]);

    // --internal only: nothing published (Docker skips silently).
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.64.0.0/24",
        "--internal",
        "back",
    ]);
    d.sleeper("int", &["back"], &["-p", "127.0.0.1:18300:80"]);
    assert_eq!(d.ok(&["port", "int"]), "");
    assert_eq!(
        d.inspect_container("int")["NetworkSettings"]["Ports"],
        json!({"80/tcp": null})
    );
    if d.ns.is_some() {
        assert_eq!(bound(&d, "127.0.0.1:18300"), Some(false));
    }
    // Internal first, then a normal network: published on the latter.
    d.sleeper("mix", &["back", "front"], &["-p", "127.0.0.1:18300:80"]);
    assert_eq!(port_lines(&d, "mix"), ["80/tcp -> 127.0.0.1:18300"]);

    // IPv6 host addresses (the container stays IPv4); [::] and 0.0.0.0
    // are different sockets.
    if d.ns.is_some() {
        d.sleeper(
            "six",
            &["front"],
            &[
                "-p",
                "[::1]:18400:80",
                "-p",
                "[::]::81",
                "-p",
                "[::]:18401:82",
            ],
        );
        d.sleeper("four", &["front"], &["-p", "18401:82"]);
        let l = port_lines(&d, "six");
        assert_eq!(l[0], "80/tcp -> [::1]:18400", "{l:?}");
        assert!(l[1].starts_with("81/tcp -> [::]:"), "{l:?}");
        assert_eq!(l[2], "82/tcp -> [::]:18401", "{l:?}");
        assert_eq!(port_lines(&d, "four"), ["82/tcp -> 0.0.0.0:18401"]);
        let ps = d.ok(&["ps"]);
        assert!(ps.contains("[::1]:18400->80/tcp"), "{ps}");
        assert_eq!(
            d.inspect_container("six")["NetworkSettings"]["Ports"]["80/tcp"],
            json!([{"HostIp": "::1", "HostPort": "18400"}])
        );
        let e = d.fails(&["run", "-d", "-p", "[::]:18401:80", "--", "sleep", "300"]);
        assert!(
            e.ends_with("Bind for [::]:18401 failed: port is already allocated"),
            "{e}"
        );
    }
}

#[test]
fn ports_bound_again_after_daemon_restart() {
    let mut d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.65.0.0/24", "front"]);
    d.sleeper(
        "web",
        &["front"],
        &["-p", "127.0.0.1::80", "-p", "127.0.0.1:18500:81/udp"],
    );
    let before = port_lines(&d, "web");
    assert_eq!(before.len(), 2, "{before:?}");
    d.kill9();
    d.spawn();
    assert_eq!(port_lines(&d, "web"), before);
    if d.ns.is_some() {
        for l in &before {
            let (cport, addr) = l.split_once(" -> ").unwrap();
            let proto = cport.split_once('/').unwrap().1;
            let addr = format!("{addr}/{proto}");
            assert_eq!(bound(&d, &addr), Some(true), "{addr}");
        }
    }
    // Still taken for others.
    let e = d.fails(&[
        "run",
        "-d",
        "-p",
        "127.0.0.1:18500:81/udp",
        "--",
        "sleep",
        "300",
    ]);
    assert!(e.ends_with("port is already allocated"), "{e}");
    d.ok(&["rm", "-f", "web"]);
    d.sleeper("again", &["front"], &["-p", "127.0.0.1:18500:81/udp"]);
}

#[test]
fn conntrack_cli() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.66.0.0/24", "front"]);
    d.sleeper("idle", &["front"], &["-p", "127.0.0.1:18600:80"]);
    let header = "PROTO   DIR   STATE   CONTAINER   CONTAINER-ADDR   REMOTE-ADDR   HOST-ADDR   PKTS-OUT   BYTES-OUT   PKTS-IN   BYTES-IN   AGE   EXPIRES\n";
    // No traffic: no flow (the connection table of an idle container).
    assert_eq!(d.ok(&["conntrack", "--container", "idle"]), header);
    assert_eq!(d.ok(&["conntrack", "ls", "--container", "idle"]), header);
    let v: Value = serde_json::from_str(&d.ok(&[
        "conntrack",
        "ls",
        "--container",
        "idle",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(v, json!([]));
    // All flows (none of any container here either).
    let all = d.ok(&["conntrack"]);
    assert!(all.starts_with("PROTO"), "{all}");
    let e = d.fails(&["conntrack", "--container", "nope"]);
    assert!(e.contains("No such container: nope"), "{e}");
    let e = d.fails(&["conntrack", "--format", "yaml"]);
    assert!(e.contains("yaml"), "{e}");
}
