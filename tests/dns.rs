//! The embedded DNS, end to end: `dig` inside containers asks the gateway
//! address, and the switch answers inline. Names (container name, alias,
//! short id, hostname, NAME.NETWORK), case, scoping across networks, an
//! alias shared by two containers with one stopped, PTR, AAAA-empty,
//! forwarding to a resolver this test starts (dnsmasq, inside the daemon's
//! own namespace: never a real upstream), `--internal` networks not
//! forwarding, the default bridge without embedded DNS, and the seed:
//! an app reaching `database` by name. Then DNS over TCP (answered by the
//! switch without connection state): an answer over 512 bytes, after TC
//! and with `+tcp`, in one segment and (MTU 576) as a GSO super-frame, and
//! a forwarded query asked upstream over TCP.

mod ctl_support;

use ctl_support::*;
use std::process::{Child, Command, Stdio};

/// dnsmasq answering `upstream.test` with 192.0.2.7 (TEST-NET-1: data
/// only, never contacted) on 127.0.0.1:5353 of the daemon's namespace.
struct Resolver(Child);

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_resolver(ns: &str) -> Resolver {
    start_resolver_at(ns, "127.0.0.1", 5353, "192.0.2.7")
}

/// dnsmasq on `addr:port` of the daemon's namespace answering
/// `upstream.test` with `answer` (TEST-NET data, never contacted).
fn start_resolver_at(ns: &str, addr: &str, port: u16, answer: &str) -> Resolver {
    let st = Command::new("ip")
        .args(["netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success());
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "dnsmasq"])
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
        ])
        .arg(format!("--listen-address={addr}"))
        .arg(format!("--port={port}"))
        .arg(format!("--address=/upstream.test/{answer}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq (apt-get install dnsmasq-base)");
    std::thread::sleep(std::time::Duration::from_millis(300));
    Resolver(child)
}

fn ip_of(d: &Daemon, c: &str, net: &str) -> String {
    d.ip_of(c, net)
}

fn id_of(d: &Daemon, c: &str) -> String {
    d.inspect_container(c)["Id"].as_str().unwrap().to_string()
}

/// `dig +short` from inside a container; the answer lines, sorted.
fn dig(d: &Daemon, from: &str, args: &[&str]) -> Vec<String> {
    let mut a = vec!["exec", from, "--", "dig", "+short", "+tries=1", "+time=5"];
    a.extend(args);
    let out = d.ok(&a);
    let mut v: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    v.retain(|l| !l.is_empty() && !l.starts_with(';'));
    v.sort();
    v
}

/// The full `dig` output (status line and counts).
fn dig_full(d: &Daemon, from: &str, args: &[&str]) -> String {
    let mut a = vec!["exec", from, "--", "dig", "+tries=1", "+time=5"];
    a.extend(args);
    d.ok(&a)
}

fn run(d: &Daemon, name: &str, nets: &[&str], extra: &[&str]) {
    d.sleeper(name, nets, extra)
}

#[test]
fn embedded_dns_names_scoping_forwarding() {
    let mut resolver = None;
    let d = Daemon::start_with(&["--dns-upstream", "127.0.0.1:5353"], |d| {
        let ns = d.ns.as_ref().expect("this test runs as root").name.clone();
        resolver = Some(start_resolver(&ns));
    });
    d.ok(&["network", "create", "--subnet", "10.71.0.0/24", "front"]);
    d.ok(&["network", "create", "--subnet", "10.72.0.0/24", "back"]);
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.73.0.0/24",
        "--internal",
        "priv",
    ]);
    run(
        &d,
        "db",
        &["front"],
        &["--network-alias", "database", "--hostname", "dbhost"],
    );
    run(&d, "app", &["front"], &[]);
    run(&d, "other", &["back"], &[]);
    run(&d, "hub", &["front", "back"], &[]);
    run(&d, "w1", &["front"], &["--network-alias", "web"]);
    run(&d, "w2", &["front"], &["--network-alias", "web"]);
    run(&d, "pc", &["priv"], &[]);
    let db = ip_of(&d, "db", "front");
    let other = ip_of(&d, "other", "back");

    // resolv.conf names the gateway, with ndots:0.
    let resolv = d.ok(&["exec", "app", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.71.0.1"), "{resolv}");
    assert!(resolv.contains("options ndots:0"), "{resolv}");

    // Every kind of name, any case, NAME.NETWORK.
    let short = id_of(&d, "db")[..12].to_string();
    for name in [
        "db",
        "database",
        "dbhost",
        "DB",
        "Database.Front",
        "db.front",
        &short,
    ] {
        assert_eq!(
            dig(&d, "app", &[name]),
            vec![db.clone()],
            "name {name}\n{}",
            d.log()
        );
    }
    // The seed: the app reaches `database` by name (glibc resolver).
    d.ok(&[
        "exec", "app", "--", "ping", "-c", "1", "-W", "2", "database",
    ]);

    // Scoping: app (front) does not see `other` (back): it is forwarded
    // upstream like any unknown name, and the upstream does not know it.
    assert!(dig(&d, "app", &["other"]).is_empty());
    // hub, on both networks, sees both.
    assert_eq!(dig(&d, "hub", &["other"]), vec![other.clone()]);
    assert_eq!(dig(&d, "hub", &["db"]), vec![db.clone()]);

    // An alias on two containers returns both; after one stops, one.
    let w1 = ip_of(&d, "w1", "front");
    let w2 = ip_of(&d, "w2", "front");
    let mut both = vec![w1.clone(), w2.clone()];
    both.sort();
    assert_eq!(dig(&d, "app", &["web"]), both);
    d.ok(&["stop", "w2"]);
    assert_eq!(dig(&d, "app", &["web"]), vec![w1.clone()]);
    d.ok(&["exec", "app", "--", "ping", "-c", "1", "-W", "2", "web"]);

    // PTR, AAAA (exists, no IPv6), other types for known names.
    assert_eq!(dig(&d, "app", &["-x", &db]), vec!["db.front.".to_string()]);
    let aaaa = dig_full(&d, "app", &["db", "AAAA"]);
    assert!(
        aaaa.contains("status: NOERROR") && aaaa.contains("ANSWER: 0"),
        "{aaaa}"
    );
    let mx = dig_full(&d, "app", &["db", "MX"]);
    assert!(
        mx.contains("status: NOERROR") && mx.contains("ANSWER: 0"),
        "{mx}"
    );

    // Forwarding to the daemon's upstream (the resolver this test runs).
    assert_eq!(
        dig(&d, "app", &["upstream.test"]),
        vec!["192.0.2.7".to_string()]
    );
    // A container only on an --internal network gets no forwarding.
    let internal = dig_full(&d, "pc", &["upstream.test"]);
    assert!(internal.contains("status: REFUSED"), "{internal}");

    // The default bridge has no embedded DNS: its resolv.conf is not the gateway.
    run(&d, "bb", &["bridge"], &["--dns", "127.0.0.1"]);
    let resolv = d.ok(&["exec", "bb", "--", "cat", "/etc/resolv.conf"]);
    assert!(!resolv.contains("172.17.0.1"), "{resolv}");
    drop(resolver);
}

/// DNS over TCP, answered by the switch's stateless TCP: an alias on 40
/// containers makes an A answer over 512 bytes, so dig without EDNS gets
/// TC over UDP and retries over TCP; `+tcp` asks over TCP at once, for a
/// local name and for a forwarded one (the upstream asked over TCP).
#[test]
fn embedded_dns_over_tcp() {
    let mut resolver = None;
    let d = Daemon::start_with(&["--dns-upstream", "127.0.0.1:5353"], |d| {
        let ns = d.ns.as_ref().expect("this test runs as root").name.clone();
        resolver = Some(start_resolver(&ns));
    });
    d.ok(&["network", "create", "--subnet", "10.74.0.0/24", "wide"]);
    run(&d, "asker", &["wide"], &[]);
    let mut want = Vec::new();
    for i in 0..40 {
        let name = format!("b{i}");
        run(&d, &name, &["wide"], &["--network-alias", "big"]);
        want.push(ip_of(&d, &name, "wide"));
    }
    want.sort();

    // UDP without EDNS: truncated, then the same query over TCP.
    let full = dig_full(&d, "asker", &["+noedns", "big"]);
    assert!(full.contains("retrying in TCP mode"), "{full}");
    assert!(full.contains("ANSWER: 40"), "{full}");
    assert_eq!(dig(&d, "asker", &["+noedns", "big"]), want);
    // TCP at once, local and forwarded.
    assert_eq!(dig(&d, "asker", &["+tcp", "big"]), want, "{}", d.log());
    assert_eq!(
        dig(&d, "asker", &["+tcp", "upstream.test"]),
        vec!["192.0.2.7".to_string()],
        "{}",
        d.log()
    );
    // On a network with MTU 576 (MSS 536) the same answer is larger than
    // one segment: sent as one GSO super-frame that the TAP segments.
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.75.0.0/24",
        "-o",
        "com.docker.network.driver.mtu=576",
        "narrow",
    ]);
    run(&d, "small", &["narrow"], &[]);
    let mut narrow = Vec::new();
    for i in 0..40 {
        let name = format!("b{i}");
        d.ok(&["network", "connect", "--alias", "big", "narrow", &name]);
        narrow.push(ip_of(&d, &name, "narrow"));
    }
    narrow.sort();
    let links = d.ok(&["exec", "small", "--", "ip", "-o", "link"]);
    let netw = d.ok(&["network", "inspect", "narrow"]);
    assert!(links.contains("mtu 576"), "{links}\n{netw}");
    assert_eq!(dig(&d, "small", &["+tcp", "big"]), narrow, "{}", d.log());
    assert_eq!(dig(&d, "small", &["+noedns", "big"]), narrow);

    // glibc (no EDNS: TC, then TCP) gets every address too.
    let out = d.ok(&["exec", "asker", "--", "getent", "ahostsv4", "big"]);
    let mut got: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got, want);
    drop(resolver);
}

/// Upstream order: the daemon's first `--dns-upstream` refuses (nothing
/// listens: the next server is asked at once), the second answers; a
/// container's own `--dns` server is used instead of the daemon's.
#[test]
fn forwarding_order_and_per_container_dns() {
    let mut resolvers = vec![];
    let d = Daemon::start_with(
        &[
            "--dns-upstream",
            "127.0.0.1:5399",
            "--dns-upstream",
            "127.0.0.1:5353",
        ],
        |d| {
            let ns = d.ns.as_ref().expect("this test runs as root").name.clone();
            resolvers.push(start_resolver(&ns));
            // The container's --dns server (port 53 of another loopback address).
            resolvers.push(start_resolver_at(&ns, "127.0.0.2", 53, "192.0.2.8"));
        },
    );
    d.ok(&["network", "create", "--subnet", "10.74.0.0/24", "fwd"]);
    run(&d, "plain", &["fwd"], &[]);
    run(&d, "own", &["fwd"], &["--dns", "127.0.0.2"]);
    // resolv.conf still names the embedded DNS (Docker: --dns is where it forwards).
    let resolv = d.ok(&["exec", "own", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.74.0.1"), "{resolv}");
    assert_eq!(
        dig(&d, "plain", &["upstream.test"]),
        vec!["192.0.2.7".to_string()]
    );
    assert_eq!(
        dig(&d, "own", &["upstream.test"]),
        vec!["192.0.2.8".to_string()]
    );
    // Local names still answered locally for both.
    let own = ip_of(&d, "own", "fwd");
    assert_eq!(dig(&d, "plain", &["own"]), vec![own]);
    drop(resolvers);
}
