//! `tapnet network ...` against a real daemon in a private network
//! namespace: predefined networks, IPAM defaults, Docker's JSON shapes,
//! every bad input (one line on stderr, non-zero exit, nothing half
//! created), `rm` with endpoints, prune, filters, and state surviving
//! `kill -9` of the daemon.

mod ctl_support;

use ctl_support::*;
use serde_json::{json, Value};

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// A container record made through the API (create only: no sandbox is
/// needed for its endpoints to exist).
fn create_container(d: &Daemon, name: &str, networks: &[&str]) -> Value {
    let nets: Vec<Value> = networks.iter().map(|n| json!({"Network": n})).collect();
    d.client()
        .post(
            "/containers/create",
            &json!({"Name": name, "Networks": nets, "Cmd": ["true"]}),
        )
        .unwrap_or_else(|e| panic!("create container {name}: {e}"))
}

#[test]
fn predefined_networks() {
    let d = Daemon::start();
    let out = d.ok(&["network", "ls"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NETWORK ID"), "{out}");
    assert!(lines[0].contains("NAME") && lines[0].contains("DRIVER") && lines[0].contains("SCOPE"));
    for (name, driver) in [("bridge", "bridge"), ("host", "host"), ("none", "null")] {
        let row = lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} missing: {out}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0].len(), 12);
        assert_eq!(cols[2], driver);
        assert_eq!(cols[3], "local");
    }
    let ids = d.ok(&["network", "ls", "-q"]);
    assert_eq!(ids.lines().count(), 3);
    assert!(ids.lines().all(|l| l.len() == 12));

    let b = d.inspect_network("bridge");
    assert!(is_hex64(b["Id"].as_str().unwrap()));
    assert_eq!(b["Name"], "bridge");
    assert_eq!(b["Scope"], "local");
    assert_eq!(b["Driver"], "bridge");
    assert_eq!(b["IPAM"]["Driver"], "default");
    assert_eq!(b["IPAM"]["Config"][0]["Subnet"], "172.17.0.0/16");
    assert_eq!(b["IPAM"]["Config"][0]["Gateway"], "172.17.0.1");
    assert_eq!(
        b["Options"]["com.docker.network.bridge.default_bridge"],
        "true"
    );
    assert_eq!(b["Options"]["com.docker.network.bridge.enable_icc"], "true");
    assert_eq!(
        b["Options"]["com.docker.network.bridge.enable_ip_masquerade"],
        "true"
    );
    assert_eq!(
        b["Options"]["com.docker.network.bridge.host_binding_ipv4"],
        "0.0.0.0"
    );
    assert_eq!(b["Options"]["com.docker.network.driver.mtu"], "1500");
    for k in [
        "Name",
        "Id",
        "Created",
        "Scope",
        "Driver",
        "EnableIPv6",
        "IPAM",
        "Internal",
        "Attachable",
        "Ingress",
        "ConfigFrom",
        "ConfigOnly",
        "Containers",
        "Options",
        "Labels",
    ] {
        assert!(b.get(k).is_some(), "inspect lacks {k}: {b}");
    }
    let created = b["Created"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(created).expect("Created is RFC 3339");
    assert!(created.contains('.'), "nanoseconds in {created}");
    assert_eq!(b["ConfigFrom"]["Network"], "");

    // Predefined networks cannot be removed.
    for n in ["bridge", "host", "none"] {
        let e = d.fails(&["network", "rm", n]);
        assert!(e.contains("pre-defined"), "{e}");
    }
    // Nor created twice.
    let e = d.fails(&["network", "create", "-d", "host", "h2"]);
    assert!(e.contains("host"), "{e}");
}

#[test]
fn create_inspect_rm_and_ipam_defaults() {
    let d = Daemon::start();
    let id = d.ok(&["network", "create", "a"]).trim().to_string();
    assert!(is_hex64(&id), "{id}");
    let a = d.inspect_network("a");
    assert_eq!(a["Id"], id.as_str());
    assert_eq!(a["IPAM"]["Config"][0]["Subnet"], "172.18.0.0/16");
    assert_eq!(a["IPAM"]["Config"][0]["Gateway"], "172.18.0.1");
    assert_eq!(a["Options"], json!({}));
    assert_eq!(a["Containers"], json!({}));
    // Inspect by id and by id prefix.
    assert_eq!(d.inspect_network(&id)["Name"], "a");
    assert_eq!(d.inspect_network(&id[..6])["Name"], "a");

    d.ok(&["network", "create", "b"]);
    assert_eq!(
        d.inspect_network("b")["IPAM"]["Config"][0]["Subnet"],
        "172.19.0.0/16"
    );
    // A user subnet inside a default pool takes that pool out.
    d.ok(&["network", "create", "--subnet", "172.20.9.0/24", "c"]);
    d.ok(&["network", "create", "e"]);
    assert_eq!(
        d.inspect_network("e")["IPAM"]["Config"][0]["Subnet"],
        "172.21.0.0/16"
    );
    assert_eq!(
        d.inspect_network("c")["IPAM"]["Config"][0]["Gateway"],
        "172.20.9.1"
    );
    // Freed pools are reused.
    assert_eq!(d.ok(&["network", "rm", "a"]).trim(), "a");
    d.ok(&["network", "create", "f"]);
    assert_eq!(
        d.inspect_network("f")["IPAM"]["Config"][0]["Subnet"],
        "172.18.0.0/16"
    );

    // Everything explicit.
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.10.0.0/24",
        "--gateway",
        "10.10.0.254",
        "--ip-range",
        "10.10.0.128/25",
        "--aux-address",
        "router=10.10.0.3",
        "--internal",
        "--attachable",
        "--label",
        "team=net",
        "--label",
        "flag",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "-o",
        "com.docker.network.bridge.name=br-test",
        "-o",
        "com.docker.network.bridge.host_binding_ipv4=127.0.0.1",
        "-o",
        "com.docker.network.bridge.enable_ip_masquerade=false",
        "full",
    ]);
    let f = d.inspect_network("full");
    let cfg = &f["IPAM"]["Config"][0];
    assert_eq!(cfg["Subnet"], "10.10.0.0/24");
    assert_eq!(cfg["Gateway"], "10.10.0.254");
    assert_eq!(cfg["IPRange"], "10.10.0.128/25");
    assert_eq!(cfg["AuxiliaryAddresses"]["router"], "10.10.0.3");
    assert_eq!(f["Internal"], true);
    assert_eq!(f["Attachable"], true);
    assert_eq!(f["Labels"]["team"], "net");
    assert_eq!(f["Labels"]["flag"], "");
    assert_eq!(f["Options"]["com.docker.network.driver.mtu"], "1400");
    assert_eq!(f["Options"]["com.docker.network.bridge.name"], "br-test");

    // Endpoints: dynamic addresses come from the ip-range, skipping
    // network/broadcast/gateway/aux.
    let c1 = create_container(&d, "c1", &["full"]);
    assert_eq!(c1["Interfaces"][0]["IPAddress"], "10.10.0.128");
    assert_eq!(c1["Interfaces"][0]["IPPrefixLen"], 24);
    assert_eq!(c1["Interfaces"][0]["Gateway"], "10.10.0.254");
    assert_eq!(c1["Interfaces"][0]["Mtu"], 1400);
    let mac = c1["Interfaces"][0]["MacAddress"].as_str().unwrap();
    let first = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(first & 3, 2, "locally administered unicast MAC {mac}");

    // Inspect of several networks is one JSON array.
    let out = d.ok(&["network", "inspect", "b", "c"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    // rm of several: prints each, fails overall if one failed.
    let o = d.tapnet(&["network", "rm", "b", "nope", "c"]);
    assert_ne!(o.code, 0);
    assert_eq!(o.stdout.lines().collect::<Vec<_>>(), ["b", "c"]);
    assert!(o.stderr.contains("nope"), "{}", o.stderr);
    assert!(!d.network_names().contains(&"b".to_string()));
}

#[test]
fn bad_inputs_give_one_line_and_change_nothing() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.1.0.0/16", "taken"]);
    let before = d.ok(&["network", "ls", "-q", "--no-trunc"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["network", "create", "--subnet", "172.17.5.0/24", "x"],
            "bridge",
        ),
        (
            &["network", "create", "--subnet", "10.0.0.0/8", "x"],
            "taken",
        ),
        (
            &[
                "network",
                "create",
                "--subnet",
                "10.2.0.0/24",
                "--gateway",
                "10.3.0.1",
                "x",
            ],
            "10.3.0.1",
        ),
        (
            &[
                "network",
                "create",
                "--subnet",
                "10.2.0.0/24",
                "--ip-range",
                "10.2.1.0/25",
                "x",
            ],
            "10.2.1.0/25",
        ),
        (
            &[
                "network",
                "create",
                "--subnet",
                "10.2.0.0/24",
                "--aux-address",
                "a=10.9.0.1",
                "x",
            ],
            "10.9.0.1",
        ),
        (
            &["network", "create", "--subnet", "10.2.0.1/24", "x"],
            "10.2.0.0/24",
        ),
        (&["network", "create", "--subnet", "banana", "x"], "banana"),
        (
            &["network", "create", "--gateway", "10.2.0.1", "x"],
            "subnet",
        ),
        (&["network", "create", "taken"], "already exists"),
        (
            &[
                "network",
                "create",
                "-o",
                "com.docker.network.bridge.enable_icc=maybe",
                "x",
            ],
            "enable_icc",
        ),
        (
            &[
                "network",
                "create",
                "-o",
                "com.docker.network.driver.mtu=abc",
                "x",
            ],
            "mtu",
        ),
        (
            &[
                "network",
                "create",
                "-o",
                "com.docker.network.driver.mtu=20",
                "x",
            ],
            "mtu",
        ),
        (
            &[
                "network",
                "create",
                "-o",
                "com.docker.network.bridge.host_binding_ipv4=nope",
                "x",
            ],
            "host_binding_ipv4",
        ),
        (&["network", "create", "-o", "novalue", "x"], "novalue"),
        (
            &["network", "create", "-d", "overlay", "x"],
            "overlay networks need a cluster store",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                "ipvlan",
                "-o",
                "ipvlan_mode=l4",
                "x",
            ],
            "ipvlan mode 'l4' is not valid",
        ),
        (&["network", "create", "a/b"], "a/b"),
        (&["network", "inspect", "nope"], "nope"),
        (&["network", "rm", "nope"], "nope"),
        (&["network", "connect", "nope", "c"], "nope"),
        (
            &["network", "connect", "taken", "nocontainer"],
            "nocontainer",
        ),
        (
            &["network", "disconnect", "taken", "nocontainer"],
            "nocontainer",
        ),
        (&["run", "-p", "80:80:80:80", "--", "true"], "80:80:80:80"),
        (&["run", "-p", "99999", "--", "true"], "99999"),
        (&["run", "-p", "80/sctp", "--", "true"], "sctp"),
        (&["run", "--network", "nope", "--", "true"], "nope"),
    ];
    for (args, needle) in cases {
        let line = d.fails(args);
        assert!(
            line.contains(needle),
            "tapnet {args:?}: {line:?} does not mention {needle:?}"
        );
        assert_eq!(
            d.ok(&["network", "ls", "-q", "--no-trunc"]),
            before,
            "tapnet {args:?} changed the networks"
        );
    }
    assert!(!d.network_names().contains(&"x".to_string()));
    // No container was left behind by the failed runs.
    assert_eq!(d.ok(&["ps", "-a", "-q"]), "");
    // A taken address and a duplicate container name.
    d.ok(&["network", "create", "--subnet", "10.4.0.0/24", "n4"]);
    let c = d.client().post::<Value>(
        "/containers/create",
        &json!({"Name": "one", "Networks": [{"Network": "n4", "IPv4Address": "10.4.0.9"}], "Cmd": ["true"]}),
    );
    assert!(c.is_ok());
    let e = d
        .client()
        .post::<Value>(
            "/containers/create",
            &json!({"Name": "two", "Networks": [{"Network": "n4", "IPv4Address": "10.4.0.9"}], "Cmd": ["true"]}),
        )
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("10.4.0.9"), "{e}");
    let e = d
        .client()
        .post::<Value>(
            "/containers/create",
            &json!({"Name": "x", "Networks": [{"Network": "n4", "IPv4Address": "10.5.0.9"}], "Cmd": ["true"]}),
        )
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    let e = d
        .client()
        .post::<Value>(
            "/containers/create",
            &json!({"Name": "one", "Networks": [{"Network": "n4"}], "Cmd": ["true"]}),
        )
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    // --ip on the default bridge is refused like Docker.
    let e = d
        .client()
        .post::<Value>(
            "/containers/create",
            &json!({"Networks": [{"Network": "bridge", "IPv4Address": "172.17.0.9"}], "Cmd": ["true"]}),
        )
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    // Only "one" exists, holding only 10.4.0.9.
    let n4 = d.inspect_network("n4");
    let cs = n4["Containers"].as_object().unwrap();
    assert_eq!(cs.len(), 1);
    assert_eq!(cs.values().next().unwrap()["IPv4Address"], "10.4.0.9/24");
}

#[test]
fn daemon_unreachable_is_one_line() {
    let dir = TempDir::new();
    let sock = dir.0.join("nothing.sock");
    let o = std::process::Command::new(BIN)
        .args(["-H", &format!("unix://{}", sock.display()), "network", "ls"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&sock.display().to_string()), "{err}");
    assert_eq!(
        err.matches("os error").count(),
        1,
        "cause printed once: {err}"
    );
    // TAPNET_HOST is honoured too.
    let o = std::process::Command::new(BIN)
        .env("TAPNET_HOST", format!("unix://{}", sock.display()))
        .args(["network", "ls"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&sock.display().to_string()), "{err}");
}

#[test]
fn rm_refused_with_endpoints_then_allowed() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.20.0.0/24", "busy"]);
    let c = create_container(&d, "holder", &["busy"]);
    let cid = c["Id"].as_str().unwrap().to_string();
    assert_eq!(c["Interfaces"][0]["Name"], "eth0");
    assert_eq!(c["Interfaces"][0]["IPAddress"], "10.20.0.2");

    let n = d.inspect_network("busy");
    let ep = &n["Containers"][&cid];
    assert_eq!(ep["Name"], "holder");
    assert_eq!(ep["IPv4Address"], "10.20.0.2/24");
    assert_eq!(ep["IPv6Address"], "");
    assert!(is_hex64(ep["EndpointID"].as_str().unwrap()));
    assert_eq!(ep["MacAddress"], c["Interfaces"][0]["MacAddress"]);

    let e = d.fails(&["network", "rm", "busy"]);
    assert!(e.contains("active endpoints"), "{e}");
    assert!(d.network_names().contains(&"busy".to_string()));
    // Prune leaves it too.
    d.ok(&["network", "prune", "-f"]);
    assert!(d.network_names().contains(&"busy".to_string()));

    // connect/disconnect a created container through the CLI.
    d.ok(&["network", "create", "--subnet", "10.21.0.0/24", "second"]);
    d.ok(&[
        "network",
        "connect",
        "--ip",
        "10.21.0.77",
        "--alias",
        "db",
        "second",
        "holder",
    ]);
    let s = d.inspect_network("second");
    assert_eq!(s["Containers"][&cid]["IPv4Address"], "10.21.0.77/24");
    let ci: Value = serde_json::from_str(&d.ok(&["inspect", "holder"])).unwrap();
    let nets = &ci[0]["NetworkSettings"]["Networks"];
    assert_eq!(nets["busy"]["IPAddress"], "10.20.0.2");
    assert_eq!(nets["busy"]["IPPrefixLen"], 24);
    assert_eq!(nets["busy"]["Gateway"], "10.20.0.1");
    assert_eq!(nets["second"]["IPAddress"], "10.21.0.77");
    assert_eq!(nets["second"]["Aliases"], json!(["db"]));
    assert_eq!(nets["second"]["NetworkID"], s["Id"]);
    let e = d.fails(&["network", "connect", "second", "holder"]);
    assert!(e.contains("already exists"), "{e}");
    d.ok(&["network", "disconnect", "second", "holder"]);
    assert_eq!(d.inspect_network("second")["Containers"], json!({}));
    let e = d.fails(&["network", "disconnect", "second", "holder"]);
    assert!(e.contains("not connected"), "{e}");
    // The released address can be taken again.
    let c2 = d.client().post::<Value>(
        "/containers/create",
        &json!({"Networks": [{"Network": "second", "IPv4Address": "10.21.0.77"}], "Cmd": ["true"]}),
    );
    assert!(c2.is_ok());

    d.ok(&["rm", "holder"]);
    assert_eq!(d.inspect_network("busy")["Containers"], json!({}));
    assert_eq!(d.ok(&["network", "rm", "busy"]).trim(), "busy");
}

#[test]
fn prune_and_filters() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--label", "env=prod", "p1"]);
    d.ok(&["network", "create", "--label", "env=dev", "p2"]);
    d.ok(&["network", "create", "hold"]);
    create_container(&d, "user", &["hold"]);

    let names = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["network", "ls", "--format", "json"];
        v.extend_from_slice(args);
        d.ok(&v)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["Name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(names(&["--filter", "name=p"]), ["p1", "p2"]);
    assert_eq!(names(&["--filter", "label=env=prod"]), ["p1"]);
    assert_eq!(names(&["--filter", "label=env"]), ["p1", "p2"]);
    assert_eq!(names(&["--filter", "driver=null"]), ["none"]);
    assert_eq!(
        names(&["--filter", "type=builtin"]),
        ["bridge", "host", "none"]
    );
    assert_eq!(
        names(&["--filter", "name=p", "--filter", "name=hold"]),
        ["hold", "p1", "p2"]
    );
    let id = d.inspect_network("p2")["Id"].as_str().unwrap().to_string();
    assert_eq!(names(&["--filter", &format!("id={}", &id[..10])]), ["p2"]);
    let e = d.fails(&["network", "ls", "--filter", "colour=blue"]);
    assert!(e.contains("colour"), "{e}");

    // The API with a version prefix and Docker's map-style filters.
    let v: Vec<Value> = d
        .client()
        .get(&format!(
            "/v1.43/networks?filters={}",
            tapnet::client::enc(r#"{"driver":{"bridge":true}}"#)
        ))
        .unwrap();
    assert_eq!(v.len(), 4);

    let out = d.ok(&["network", "prune", "-f"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["Deleted Networks:", "p1", "p2"]
    );
    assert_eq!(names(&[]), ["bridge", "hold", "host", "none"]);
    assert_eq!(d.ok(&["network", "prune", "-f"]), "");
}

#[test]
fn state_survives_kill9_and_restart() {
    let mut d = Daemon::start();
    let id = d
        .ok(&[
            "network",
            "create",
            "--subnet",
            "10.30.0.0/24",
            "--label",
            "k=v",
            "persist",
        ])
        .trim()
        .to_string();
    d.ok(&["network", "create", "other"]);
    // A running container keeps its endpoint across the restart (one only
    // created, never started, is rolled back: tests/probing.rs).
    d.sleeper("keeper", &["persist"], &[]);
    let before_net = d.inspect_network("persist");
    let before_bridge = d.inspect_network("bridge");

    d.kill9();
    d.spawn();
    assert_eq!(d.inspect_network("persist"), before_net);
    assert_eq!(d.inspect_network("bridge")["Id"], before_bridge["Id"]);
    assert_eq!(d.inspect_network(&id)["Name"], "persist");
    assert_eq!(
        d.network_names(),
        ["bridge", "host", "none", "other", "persist"]
    );
    // The allocation survived: the next container gets the next address.
    let c2 = create_container(&d, "second", &["persist"]);
    assert_eq!(d.ip_of("keeper", "persist"), "10.30.0.2");
    assert_eq!(c2["Interfaces"][0]["IPAddress"], "10.30.0.3");
    let ps = d.ok(&["ps", "-a"]);
    assert!(ps.contains("keeper") && ps.contains("second"), "{ps}");

    // Changes after a restart persist too; a clean stop as well.
    d.ok(&["network", "rm", "other"]);
    d.stop();
    d.spawn();
    assert_eq!(d.network_names(), ["bridge", "host", "none", "persist"]);

    // A second daemon on the same root is refused (after waiting a
    // bounded time for the lock: tests/probing.rs).
    let o = std::process::Command::new(BIN)
        .args(["daemon", "--root"])
        .arg(&d.root)
        .args(["-H", &format!("unix://{}/other.sock", d.dir.0.display())])
        .env("TAPNET_LOG", "error")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("another tapnet daemon"), "{err}");
}
