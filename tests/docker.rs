//! Docker uses tapnet as its network driver (issue 17): a real dockerd
//! (Debian's docker.io) and the real `docker`/`docker-compose` clients, in
//! namespaces of the test (`docker_support`). Each scenario of the seeds
//! runs on `-d tapnet` networks and on Docker's own bridge driver in the
//! same dockerd, and the outcomes must be the same (and what Docker
//! documents): hub and isolation by IP and name, a static `--ip`, a shared
//! `--network-alias` with one container stopped, ICC off, `docker network
//! connect` of a running container, published ports (with the client's
//! address), outbound (and Docker's DNS forwarding through tapnet's NAT).
//! Then what only tapnet's side has: restarts of tapnet and dockerd,
//! compose, bad options, tapnet's own view.
//!
//! Dual-stack `-d tapnet --ipv6` networks (issue 20): `dual_stack_network`
//! (IPv6 by address, name and to the gateway, anti-spoofing, outbound
//! masquerade to an IPv6 "outside", published ports from IPv6 clients, a
//! tapnet restart).
//!
//! Rootless Docker (dockerd-rootless.sh, RootlessKit) with a rootless
//! tapnet runs as the test user in `tests/rootless_docker.sh`.
//!
//! Root only. "Outside" is a namespace wired to the host namespace (tapnet
//! and dockerd) by a veth pair, with an HTTP server and dnsmasq (TEST-NET
//! addresses; nothing leaves the test's namespaces).

mod ctl_support;
mod docker_support;
mod rootless_support;

use std::time::Duration;

use ctl_support::*;
use docker_support::*;

/// dockerd's resolv.conf where no test resolver is needed: a TEST-NET
/// address no route leads to (Docker would fall back to public resolvers
/// if it found only loopback ones).
const NO_RESOLVER: &str = "nameserver 192.0.2.53";

/// The host's end of the veth to "outside", and outside's.
const HOST: &str = "192.0.2.1";
const OUTSIDE: &str = "192.0.2.2";

/// The subnets a scenario uses on each driver (Docker's own IPAM refuses
/// overlaps; tapnet too).
fn subnet(driver: &str, i: u8) -> String {
    match driver {
        "tapnet" => format!("10.71.{i}.0/24"),
        _ => format!("10.81.{i}.0/24"),
    }
}

/// A container's address on a network (`docker inspect`); empty when it
/// has none (stopped).
fn ip_on(h: &DockerHost, c: &str, net: &str) -> String {
    let f = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
    h.ok(&["inspect", "-f", &f, c]).trim().to_string()
}

/// One named outcome of a scenario.
type Outcomes = Vec<(&'static str, bool)>;

/// Hub and isolation: `a` on net A, `b` on net B, `hub` on A then
/// connected to B (a running container), then disconnected.
fn hub(h: &DockerHost, drv: &str) -> Outcomes {
    let (na, nb) = (format!("{drv}-a"), format!("{drv}-b"));
    h.ok(&[
        "network",
        "create",
        "-d",
        drv,
        "--subnet",
        &subnet(drv, 1),
        &na,
    ]);
    h.ok(&[
        "network",
        "create",
        "-d",
        drv,
        "--subnet",
        &subnet(drv, 2),
        &nb,
    ]);
    let (a, b, hub) = (
        format!("{drv}-a1"),
        format!("{drv}-b1"),
        format!("{drv}-hub"),
    );
    h.sleeper(&a, &na, &[]);
    h.sleeper(&b, &nb, &[]);
    h.sleeper(&hub, &na, &[]);
    let ip_b = ip_on(h, &b, &nb);
    let ip_b = ip_b.as_str();
    let ping = |from: &str, to: &str| h.works(from, &format!("ping -c1 -W2 {to}"));
    let mut out = vec![
        ("hub reaches a by name", ping(&hub, &a)),
        ("hub reaches b before connect", ping(&hub, ip_b)),
    ];
    h.ok(&["network", "connect", &nb, &hub]);
    out.push(("hub reaches b by name after connect", ping(&hub, &b)));
    out.push(("hub reaches b by IP after connect", ping(&hub, ip_b)));
    out.push(("a reaches b by IP", ping(&a, ip_b)));
    out.push(("a resolves b", h.works(&a, &format!("nslookup {b}"))));
    h.ok(&["network", "disconnect", &nb, &hub]);
    out.push(("hub reaches b after disconnect", ping(&hub, ip_b)));
    out.push(("hub still reaches a", ping(&hub, &a)));
    out
}

/// A static `--ip`, two containers sharing an alias with one stopped,
/// ICC off.
fn addresses_aliases_icc(h: &DockerHost, drv: &str) -> Outcomes {
    let n = format!("{drv}-s");
    let sub = subnet(drv, 3);
    h.ok(&["network", "create", "-d", drv, "--subnet", &sub, &n]);
    let ip = sub.replace(".0/24", ".50");
    let (st, d1, d2, cl) = (
        format!("{drv}-static"),
        format!("{drv}-db1"),
        format!("{drv}-db2"),
        format!("{drv}-client"),
    );
    h.sleeper(&st, &n, &["--ip", &ip]);
    for c in [&d1, &d2] {
        h.sleeper(c, &n, &["--network-alias", "db"]);
    }
    h.sleeper(&cl, &n, &[]);
    let mut out = vec![
        (
            "the static address is set",
            h.works(
                &st,
                &format!("ip -o -4 addr show eth0 | grep -q ' {ip}/24'"),
            ),
        ),
        (
            "the static address answers",
            h.works(&cl, &format!("ping -c1 -W2 {ip}")),
        ),
        ("the alias answers", h.works(&cl, "ping -c1 -W2 db")),
    ];
    let (ip1, ip2) = (ip_on(h, &d1, &n), ip_on(h, &d2, &n));
    h.ok(&["stop", "-t", "1", &d1]);
    out.push((
        "the alias is only the live container's",
        h.works(
            &cl,
            &format!(
                "for i in 1 2 3 4 5; do a=$(nslookup db) || exit 1; echo \"$a\" | grep -q '{ip2}$' || exit 1; echo \"$a\" | grep -q '{ip1}$' && exit 1; done; true"
            ),
        ),
    ));
    out.push(("the alias still answers", h.works(&cl, "ping -c1 -W2 db")));
    // ICC off.
    let q = format!("{drv}-q");
    h.ok(&[
        "network",
        "create",
        "-d",
        drv,
        "--subnet",
        &subnet(drv, 4),
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        &q,
    ]);
    let (q1, q2) = (format!("{drv}-q1"), format!("{drv}-q2"));
    h.sleeper(&q1, &q, &[]);
    h.sleeper(&q2, &q, &[]);
    let gw = subnet(drv, 4).replace(".0/24", ".1");
    out.push((
        "ICC off: a peer is not reached",
        h.works(&q2, &format!("ping -c1 -W2 {q1}")),
    ));
    out.push((
        "ICC off: the gateway answers",
        h.works(&q2, &format!("ping -c1 -W2 {gw}")),
    ));
    out
}

/// Compares a scenario's outcomes on tapnet and on Docker's bridge, and
/// with what is expected.
fn same_as_bridge(h: &DockerHost, f: fn(&DockerHost, &str) -> Outcomes, expect: &[bool]) {
    let t = f(h, "tapnet");
    let b = f(h, "bridge");
    let ctx = || {
        format!(
            "--- tapnet log:\n{}\n--- dockerd:\n{}",
            h.d.log(),
            h.dockerd_log()
        )
    };
    for ((name, got_t), (_, got_b)) in t.iter().zip(&b) {
        assert_eq!(
            got_t,
            got_b,
            "{name}: tapnet {got_t}, bridge {got_b}\n{}",
            ctx()
        );
    }
    let got: Vec<bool> = t.iter().map(|x| x.1).collect();
    assert_eq!(got, expect, "{t:?}\n{}", ctx());
}

#[test]
fn seed_scenarios_match_dockers_bridge() {
    let h = DockerHost::start(NO_RESOLVER);
    same_as_bridge(
        &h,
        hub,
        &[true, false, true, true, false, false, false, true],
    );
    same_as_bridge(
        &h,
        addresses_aliases_icc,
        &[true, true, true, true, true, false, true],
    );
    // tapnet's own view: Docker's networks by their Docker id, their
    // endpoints, and no `tapnet network rm` of them.
    let id = h.ok(&["network", "inspect", "-f", "{{.Id}}", "tapnet-s"]);
    let name = format!("docker-{}", &id.trim()[..12]);
    assert!(
        h.d.network_names().contains(&name),
        "{:?}",
        h.d.network_names()
    );
    let v = h.d.inspect_network(&name);
    assert_eq!(v["Driver"], "docker");
    assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.71.3.0/24");
    assert_eq!(v["Containers"].as_object().map(|m| m.len()), Some(3), "{v}");
    let e = h.d.fails(&["network", "rm", &name]);
    assert!(e.contains("docker network rm"), "{e}");
    // docker rm -f of a running container removes its endpoint and TAP.
    h.ok(&["rm", "-f", "tapnet-static"]);
    let v = h.d.inspect_network(&name);
    assert_eq!(v["Containers"].as_object().map(|m| m.len()), Some(2), "{v}");
    let links = h.d.netns().sh_ok("ip -o link show");
    assert!(
        !links.contains(": tn"),
        "TAPs left in dockerd's namespace: {links}"
    );
}

/// The outside namespace with an HTTP server and a resolver.
struct Outside2 {
    servers: Vec<Bg>,
    outside: Outside,
    _www: TempDir,
}

fn outside(h: &DockerHost) -> Outside2 {
    let outside = Outside::connect(
        h.d.netns(),
        &[&format!("{HOST}/24")],
        &format!("{OUTSIDE}/24"),
    );
    let www = TempDir::new();
    std::fs::write(www.0.join("index.html"), "from-outside\n").unwrap();
    let servers = vec![
        outside.ns.spawn(&[
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            &www.0.display().to_string(),
        ]),
        outside.ns.spawn(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            &format!("--listen-address={OUTSIDE}"),
            &format!("--address=/outside.test/{OUTSIDE}"),
        ]),
    ];
    retry("the outside servers", Duration::from_secs(10), || {
        let o = outside.ns.sh(&format!("wget -qO- http://{OUTSIDE}/"));
        (o.stdout == "from-outside\n").then_some(()).ok_or(o.stderr)
    });
    Outside2 {
        servers,
        outside,
        _www: www,
    }
}

// (busybox 1.35's `wget -T` crashes: `timeout N wget` instead.)

/// A container serving `/cgi-bin/ip` (the client's address as it sees it)
/// with busybox httpd.
const CGI_SERVER: &str = "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && echo page > /www/index.html && exec httpd -f -p 80 -h /www";

/// Outbound (by address and through Docker's DNS forwarding), published
/// ports with the client's address, internal and masquerade-off networks.
fn outbound_and_published(h: &DockerHost, o: &Outside2, drv: &str, port: u16) -> Outcomes {
    let n = format!("{drv}-out");
    h.ok(&[
        "network",
        "create",
        "-d",
        drv,
        "--subnet",
        &subnet(drv, 5),
        &n,
    ]);
    let c = format!("{drv}-c");
    h.sleeper(&c, &n, &[]);
    let mut out = vec![
        (
            "outbound by address",
            h.sh(&c, &format!("timeout 5 wget -qO- http://{OUTSIDE}/"))
                .stdout
                == "from-outside\n",
        ),
        (
            "outbound by name (Docker's DNS forwarded through the NAT)",
            h.sh(&c, "timeout 5 wget -qO- http://outside.test/").stdout == "from-outside\n",
        ),
    ];
    let web = format!("{drv}-web");
    let p = format!("{port}:80");
    h.ok(&[
        "run",
        "-d",
        "--name",
        &web,
        "--network",
        &n,
        "-p",
        &p,
        "bb",
        "sh",
        "-c",
        CGI_SERVER,
    ]);
    let seen = retry("the published port", Duration::from_secs(10), || {
        let r = o.outside.ns.sh(&format!(
            "timeout 3 wget -qO- http://{HOST}:{port}/cgi-bin/ip"
        ));
        (r.code == 0)
            .then(|| r.stdout.trim().to_string())
            .ok_or(r.stderr)
    });
    // (busybox httpd listens on an IPv6 socket: `[::ffff:A.B.C.D]`.)
    let seen = seen.trim_start_matches("[::ffff:").trim_end_matches(']');
    out.push(("the container sees the client's address", seen == OUTSIDE));
    let taken = h.docker(&[
        "run",
        "-d",
        "--name",
        &format!("{drv}-web2"),
        "--network",
        &n,
        "-p",
        &p,
        "bb",
        "sleep",
        "60",
    ]);
    out.push((
        "a taken port fails run",
        taken.code != 0 && taken.stderr.contains("already allocated"),
    ));
    let _ = h.docker(&["rm", "-f", &format!("{drv}-web2")]);
    h.ok(&["rm", "-f", &web]);
    let freed = o
        .outside
        .ns
        .sh(&format!("timeout 2 wget -qO- http://{HOST}:{port}/"))
        .code
        != 0;
    out.push(("rm frees the port", freed));
    for (what, opts) in [
        ("internal", vec!["--internal"]),
        (
            "masquerade off",
            vec!["-o", "com.docker.network.bridge.enable_ip_masquerade=false"],
        ),
    ] {
        let net = format!("{drv}-{}", what.replace(' ', ""));
        let i = if what == "internal" { 6 } else { 7 };
        let mut a = vec!["network", "create", "-d", drv];
        a.extend(opts);
        let sub = subnet(drv, i);
        a.extend(["--subnet", &sub, &net]);
        h.ok(&a);
        // (`--init`: as PID 1, wget would ignore timeout's SIGTERM.)
        let url = format!("http://{OUTSIDE}/");
        let r = h.docker(&[
            "run",
            "--rm",
            "--init",
            "--network",
            &net,
            "bb",
            "timeout",
            "3",
            "wget",
            "-qO-",
            &url,
        ]);
        out.push((
            if what == "internal" {
                "internal: nothing out"
            } else {
                "masquerade off: nothing out"
            },
            r.stdout != "from-outside\n",
        ));
    }
    out
}

#[test]
fn published_ports_and_outbound_match_dockers_bridge() {
    let h = DockerHost::start(&format!("nameserver {OUTSIDE}"));
    let o = outside(&h);
    let t = outbound_and_published(&h, &o, "tapnet", 8081);
    // tapnet's connection table saw the container's flows.
    let ct = h.d.ok(&["conntrack", "--format", "json"]);
    assert!(ct.contains(OUTSIDE), "{ct}");
    let b = outbound_and_published(&h, &o, "bridge", 8082);
    let ctx = format!(
        "--- tapnet log:\n{}\n--- dockerd:\n{}\n{}",
        h.d.log(),
        h.dockerd_log(),
        o.servers.iter().map(|s| s.log()).collect::<String>()
    );
    assert_eq!(t.len(), b.len());
    for ((name, gt), (_, gb)) in t.iter().zip(&b) {
        assert_eq!(gt, gb, "{name}: tapnet {gt}, bridge {gb}\n{ctx}");
        assert!(gt, "{name}: {t:?}\n{ctx}");
    }
}

#[test]
fn restarts_lose_nothing() {
    let mut h = DockerHost::start(NO_RESOLVER);
    h.ok(&[
        "network",
        "create",
        "-d",
        "tapnet",
        "--subnet",
        "10.72.0.0/24",
        "keep",
    ]);
    h.sleeper("r1", "keep", &[]);
    h.sleeper("r2", "keep", &[]);
    assert!(h.works("r1", "ping -c1 -W2 r2"));
    // dockerd moved the TAP into the container (a move resets qdiscs):
    // tapnet gives it none there, as on its own containers.
    let pid = h.ok(&["inspect", "-f", "{{.State.Pid}}", "r1"]);
    retry("no qdisc on r1's eth0", Duration::from_secs(5), || {
        let tc = std::process::Command::new("nsenter")
            .args(["-t", pid.trim(), "-n", "tc", "qdisc", "show", "dev", "eth0"])
            .output()
            .map_err(|e| e.to_string())?;
        let shown = String::from_utf8_lossy(&tc.stdout).into_owned();
        shown
            .starts_with("qdisc noqueue ")
            .then_some(())
            .ok_or(shown)
    });
    let before = h.d.ok(&["network", "ls"]);
    // tapnet killed: Docker never replays CreateNetwork; traffic resumes
    // once it is back, and Docker's next calls find everything.
    h.d.kill9();
    h.d.spawn();
    assert_eq!(h.d.ok(&["network", "ls"]), before);
    retry(
        "traffic after tapnet's restart",
        Duration::from_secs(10),
        || {
            let o = h.sh("r1", "ping -c1 -W2 r2");
            (o.code == 0).then_some(()).ok_or(o.stdout)
        },
    );
    // docker stop/start keeps the address and the MAC (derived from the
    // address, as Docker's bridge does): peers' ARP caches stay right.
    h.ok(&["stop", "-t", "1", "r2"]);
    h.ok(&["start", "r2"]);
    assert!(h.works("r1", "ping -c1 -W2 r2"), "{}", h.d.log());
    // dockerd restarted with running containers (--live-restore).
    h.stop_dockerd();
    h.start_dockerd();
    assert!(h.works("r1", "ping -c1 -W2 r2"), "{}", h.dockerd_log());
    h.sleeper("r3", "keep", &[]);
    assert!(h.works("r3", "ping -c1 -W2 r1"));
    // tapnet stopped and started after dockerd: found on first use, and
    // its socket is gone while it is stopped.
    h.d.stop();
    assert!(!h.dir.0.join("plugins/tapnet.sock").exists());
    h.d.spawn();
    h.ok(&[
        "network",
        "create",
        "-d",
        "tapnet",
        "--subnet",
        "10.73.0.0/24",
        "later",
    ]);
    h.sleeper("r4", "later", &[]);
    h.ok(&["network", "connect", "later", "r1"]);
    assert!(h.works("r1", "ping -c1 -W2 r4"));
    h.ok(&["network", "disconnect", "later", "r1"]);
    h.ok(&["rm", "-f", "r4"]);
    h.ok(&["network", "rm", "later"]);
    assert!(!h.d.ok(&["network", "ls"]).contains("10.73"));
}

#[test]
fn compose_and_bad_options() {
    let h = DockerHost::start(NO_RESOLVER);
    // Bad or unknown options: refused at create, nothing left anywhere.
    let nets_before = h.d.ok(&["network", "ls", "-q"]);
    for (opt, needle) in [
        ("foo=bar", "unknown option foo"),
        ("com.docker.network.driver.mtu=abc", "mtu"),
        ("com.docker.network.bridge.enable_icc=maybe", "enable_icc"),
    ] {
        let o = h.docker(&["network", "create", "-d", "tapnet", "-o", opt, "bad"]);
        assert!(o.code != 0 && o.stderr.contains(needle), "{opt}: {o:?}");
        assert_eq!(o.stderr.trim().lines().count(), 1, "{o:?}");
    }
    // An IPv6 subnet tapnet refuses (link-local), whoever refuses first.
    let o = h.docker(&[
        "network",
        "create",
        "-d",
        "tapnet",
        "--ipv6",
        "--subnet",
        "10.79.0.0/24",
        "--subnet",
        "fe80::/64",
        "bad",
    ]);
    assert!(o.code != 0, "{o:?}");
    assert!(!h.ok(&["network", "ls"]).contains(" bad "));
    assert_eq!(h.d.ok(&["network", "ls", "-q"]), nets_before);

    // Compose: services reach each other by name on a tapnet network with
    // driver_opts and an IPAM subnet; `down` removes everything.
    let dir = TempDir::new();
    std::fs::write(
        dir.0.join("docker-compose.yml"),
        r#"version: "2.4"
services:
  web:
    image: bb
    command: sh -c "mkdir -p /www && echo hi-compose > /www/index.html && exec httpd -f -p 80 -h /www"
    networks: [front]
  client:
    image: bb
    command: sleep 600
    networks:
      front:
        ipv6_address: 2001:3984:3989::10
networks:
  front:
    driver: tapnet
    enable_ipv6: true
    driver_opts:
      com.docker.network.driver.mtu: "1400"
    ipam:
      config:
        - subnet: 10.74.0.0/24
        - subnet: 2001:3984:3989::/64
"#,
    )
    .unwrap();
    let up = h.compose(&dir.0, &["-p", "seed", "up", "-d"]);
    assert_eq!(up.code, 0, "{up:?}\n{}", h.d.log());
    let page = retry("web by service name", Duration::from_secs(15), || {
        let o = h.compose(
            &dir.0,
            &[
                "-p",
                "seed",
                "exec",
                "-T",
                "client",
                "timeout",
                "3",
                "wget",
                "-qO-",
                "http://web/",
            ],
        );
        (o.code == 0).then_some(o.stdout).ok_or(o.stderr)
    });
    assert_eq!(page, "hi-compose\n");
    let mtu = h.compose(
        &dir.0,
        &[
            "-p",
            "seed",
            "exec",
            "-T",
            "client",
            "cat",
            "/sys/class/net/eth0/mtu",
        ],
    );
    assert_eq!(mtu.stdout.trim(), "1400", "{mtu:?}");
    // The seeds' dual-stack compose file: `enable_ipv6` and an
    // `ipv6_address`; the services reach each other over IPv6 by name.
    let addrs = h.compose(
        &dir.0,
        &["-p", "seed", "exec", "-T", "client", "ip", "-6", "addr"],
    );
    assert!(addrs.stdout.contains("2001:3984:3989::10/64"), "{addrs:?}");
    let ping = h.compose(
        &dir.0,
        &[
            "-p", "seed", "exec", "-T", "client", "ping", "-6", "-c", "1", "-W", "3", "web",
        ],
    );
    assert_eq!(ping.code, 0, "{ping:?}\n{}", h.d.log());
    assert!(h
        .d
        .ok(&["network", "ls", "--format", "json"])
        .contains("docker-"));
    let down = h.compose(&dir.0, &["-p", "seed", "down"]);
    assert_eq!(down.code, 0, "{down:?}");
    assert_eq!(h.d.ok(&["network", "ls", "-q"]), nets_before);
    let links = h.d.netns().sh_ok("ip -o link show");
    assert!(!links.contains(": tn"), "TAPs left: {links}");
}

/// Dual-stack (issue 20): `docker network create -d tapnet --ipv6` with an
/// IPv4 and an IPv6 subnet. Docker's IPAM gives the containers their IPv6
/// addresses (`docker inspect`), tapnet switches them (Neighbor Discovery
/// and echo of the gateway answered by the switch, anti-spoofing on the
/// IPv6 source), Docker's DNS answers AAAA, the IPv6 default route leads to
/// tapnet's gateway, and a published port reaches the container's IPv6
/// address from an IPv6 client.
#[test]
fn dual_stack_network() {
    let mut h = DockerHost::start(NO_RESOLVER);
    let (sub4, sub6, gw6) = ("10.76.0.0/24", "2001:db8:76::/64", "2001:db8:76::1");
    h.ok(&[
        "network", "create", "-d", "tapnet", "--ipv6", "--subnet", sub4, "--subnet", sub6, "v6",
    ]);
    let id = h.ok(&["network", "inspect", "-f", "{{.Id}}", "v6"]);
    let mine = h.d.ok(&[
        "network",
        "inspect",
        &format!("docker-{}", &id.trim()[..12]),
    ]);
    assert!(
        mine.contains(sub6) && mine.contains(gw6),
        "tapnet's view: {mine}"
    );

    h.sleeper("a6", "v6", &[]);
    h.sleeper("b6", "v6", &[]);
    let f = |what: &str| format!("{{{{(index .NetworkSettings.Networks \"v6\").{what}}}}}");
    let addr6 = |c: &str| {
        h.ok(&["inspect", "-f", &f("GlobalIPv6Address"), c])
            .trim()
            .to_string()
    };
    let (a6, b6) = (addr6("a6"), addr6("b6"));
    for a in [&a6, &b6] {
        assert!(a.starts_with("2001:db8:76::"), "GlobalIPv6Address {a:?}");
    }
    assert_ne!(a6, b6);
    let gw = h.ok(&["inspect", "-f", &f("IPv6Gateway"), "a6"]);
    assert_eq!(gw.trim(), gw6);
    let ctx = || {
        format!(
            "--- dockerd:\n{}\n--- tapnet:\n{}",
            h.dockerd_log(),
            h.d.log()
        )
    };
    let show = h.sh("a6", "ip -6 addr show eth0; ip -6 route");
    assert!(
        show.stdout.contains(&format!("{a6}/64"))
            && show.stdout.contains(&format!("default via {gw6}")),
        "a6's IPv6 address and route: {show:?}"
    );

    // By address, the gateway, and by name (Docker's DNS: AAAA).
    assert!(
        h.works("a6", &format!("ping -c1 -W3 {b6}")),
        "a6 pings b6 over IPv6\n{}",
        ctx()
    );
    assert!(h.works("b6", &format!("ping -c1 -W3 {a6}")), "b6 pings a6");
    assert!(
        h.works("a6", &format!("ping -c1 -W3 {gw6}")),
        "the gateway's IPv6 address answers\n{}",
        ctx()
    );
    let ns = h.sh("a6", "nslookup -type=AAAA b6");
    assert!(
        ns.stdout.contains(&b6),
        "AAAA of b6 from Docker's DNS: {ns:?}"
    );
    assert!(
        h.works("a6", "ping -6 -c1 -W3 b6"),
        "a6 pings b6 by name over IPv6"
    );
    // A static --ip6 (Docker's IPAM gives it, tapnet takes it).
    h.sleeper("c6", "v6", &["--ip6", "2001:db8:76::50"]);
    assert_eq!(addr6("c6"), "2001:db8:76::50");
    assert!(
        h.works("a6", "ping -c1 -W3 2001:db8:76::50"),
        "the static --ip6 answers"
    );
    // Anti-spoofing: an IPv6 address a container gives itself (not
    // Docker's) does not get through the switch; its own still does.
    h.sleeper("s6", "v6", &["--cap-add", "NET_ADMIN"]);
    let s6 = addr6("s6");
    h.ok(&[
        "exec",
        "s6",
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:76::99/64",
        "dev",
        "eth0",
    ]);
    wait_until(
        "the extra address past DAD",
        Duration::from_secs(10),
        || {
            let o = h.sh("s6", "ip -6 addr show eth0");
            o.stdout.contains("2001:db8:76::99/64") && !o.stdout.contains("tentative")
        },
    );
    assert!(
        h.works("s6", &format!("ping -c1 -W3 -I {s6} {b6}")),
        "s6's own IPv6 source"
    );
    let spoofed = || -> u64 {
        h.d.stats()["ports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["drops"]["spoofed_ip"].as_u64())
                    .sum()
            })
            .unwrap_or(0)
    };
    let before = spoofed();
    assert!(
        !h.works("s6", &format!("ping -c1 -W3 -I 2001:db8:76::99 {b6}")),
        "a spoofed IPv6 source reaches b6"
    );
    assert!(spoofed() > before, "no spoofed_ip drop counted");
    // Ring drops are read where dockerd moved each TAP (every port here
    // is a Docker container's).
    let v = h.d.stats();
    let ports = v["ports"].as_array().unwrap();
    assert!(
        !ports.is_empty() && ports.iter().all(|p| p["ring_drops"].is_u64()),
        "{v}"
    );
    // The switch knows the containers' IPv6 addresses (anti-spoofing).
    let eps = h.d.ok(&[
        "network",
        "inspect",
        &format!("docker-{}", &id.trim()[..12]),
    ]);
    assert!(eps.contains(&a6) && eps.contains(&b6), "{eps}");

    // A published port: an IPv6 client (here tapnet's and dockerd's
    // namespace, on ::1) reaches the container's IPv6 address, from the
    // gateway's IPv6 address (a loopback client).
    h.ok(&[
        "run", "-d", "--name", "web6", "--network", "v6", "-p", "8086:80", "bb", "sh", "-c",
        "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho peer=$REMOTE_ADDR\\n' > /www/cgi-bin/peer && chmod +x /www/cgi-bin/peer && exec httpd -f -p 80 -h /www",
    ]);
    let page = retry(
        "the published port over IPv6",
        Duration::from_secs(15),
        || {
            let o =
                h.d.netns()
                    .sh("curl -sSg --max-time 3 'http://[::1]:8086/cgi-bin/peer'");
            (o.code == 0)
                .then_some(o.stdout.clone())
                .ok_or(format!("{o:?}"))
        },
    );
    assert!(page.contains(gw6), "{page:?}\n{}", ctx());
    let page4 = retry(
        "the published port over IPv4",
        Duration::from_secs(15),
        || {
            let o =
                h.d.netns()
                    .sh("curl -sS --max-time 3 'http://127.0.0.1:8086/cgi-bin/peer'");
            (o.code == 0)
                .then_some(o.stdout.clone())
                .ok_or(format!("{o:?}"))
        },
    );
    assert!(page4.contains("peer="), "{page4:?}");

    // Outbound IPv6, masqueraded: an "outside" namespace behind tapnet's
    // (and dockerd's) namespace sees the host's IPv6 address.
    let out6 = Outside::connect(
        h.d.netns(),
        &["2001:db8:ff::1/64 nodad"],
        "2001:db8:ff::2/64 nodad",
    );
    let _server6 = out6.ns.spawn(&[
        "socat",
        "TCP6-LISTEN:80,fork,reuseaddr",
        "SYSTEM:echo from $SOCAT_PEERADDR",
    ]);
    let from = retry("outbound TCP over IPv6", Duration::from_secs(10), || {
        let o = h.sh("a6", "timeout 5 nc 2001:db8:ff::2 80 </dev/null");
        (o.code == 0 && o.stdout.contains("from"))
            .then_some(o.stdout.clone())
            .ok_or(format!("{o:?}"))
    });
    assert!(
        from.contains("[2001:0db8:00ff:0000:0000:0000:0000:0001]"),
        "outbound IPv6 masqueraded to the host's address: {from:?}"
    );
    assert!(
        h.works("a6", "ping -c1 -W3 2001:db8:ff::2"),
        "ICMPv6 echo to the outside"
    );

    // tapnet killed and started again: the IPv6 side comes back (the
    // endpoints' IPv6 addresses, the port published on [::]).
    h.d.kill9();
    h.d.spawn();
    retry(
        "IPv6 traffic after tapnet's restart",
        Duration::from_secs(10),
        || {
            let o = h.sh("a6", &format!("ping -c1 -W2 {b6}"));
            (o.code == 0).then_some(()).ok_or(o.stdout)
        },
    );
    let again = retry(
        "the published port over IPv6 after tapnet's restart",
        Duration::from_secs(15),
        || {
            let o =
                h.d.netns()
                    .sh("curl -sSg --max-time 3 'http://[::1]:8086/cgi-bin/peer'");
            (o.code == 0)
                .then_some(o.stdout.clone())
                .ok_or(format!("{o:?}"))
        },
    );
    assert!(again.contains(gw6), "{again:?}");

    h.ok(&["rm", "-f", "a6", "b6", "c6", "s6", "web6"]);
    h.ok(&["network", "rm", "v6"]);
    let links = h.d.netns().sh_ok("ip -o link show");
    assert!(
        !links
            .lines()
            .any(|l| l.contains(": tn") && !l.contains(": tnout0")),
        "TAPs left: {links}"
    );
}

/// Rootless Docker: an ordinary user's dockerd under RootlessKit and the
/// same user's tapnet daemon, both with their defaults, in a network
/// namespace of the test (`tests/rootless_docker.sh`).
#[test]
fn rootless_docker_uses_tapnet() {
    let mut env = rootless_support::UserEnv::new("rdocker", |ns| {
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg("ip link set lo up && ip addr add 192.0.2.10/32 dev lo")
            .status()
            .unwrap();
        assert!(st.success(), "set up the rootless namespace {ns}");
    });
    env.nsenter = true;
    let run = rootless_support::run_in(env, "tests/rootless_docker.sh");
    let log = |f: &str| std::fs::read_to_string(run.work.join(f)).unwrap_or_default();
    assert!(
        run.status.success() && run.text.contains("ROOTLESS DOCKER OK"),
        "rootless docker script: {}\n{}\n--- trace\n{}",
        run.status,
        run.text,
        log("trace"),
    );
}
