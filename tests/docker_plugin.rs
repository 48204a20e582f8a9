//! The Docker network-driver plugin socket at the protocol level, without
//! dockerd: requests exactly as libnetwork sends them (POST, no
//! Content-Type, empty bodies for Activate and GetCapabilities, Go's field
//! names, options as arbitrary JSON), answers always JSON, failures as
//! `{"Err": ...}` with nothing left behind, unknown methods 404, and the
//! socket removed when the daemon stops. (tests/docker.rs drives a real
//! dockerd.)

mod ctl_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ctl_support::*;
use serde_json::{json, Value};

/// POST `path` with `body` the way Docker's plugin client does, from a
/// process in the network namespace `ns` (the caller's namespace is where
/// the plugin makes TAPs: it must be the test's own).
fn call(ns: &str, sock: &Path, path: &str, body: &str) -> (u16, Value) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: plugin.moby.localhost\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "socat", "-t", "10", "-"])
        .arg(format!("UNIX-CONNECT:{}", sock.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("socat");
    c.stdin.take().unwrap().write_all(req.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let status = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no answer to {path}: {out:?}"))
        .parse()
        .unwrap();
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => &body[a..=b],
        _ => body,
    };
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}")),
    )
}

fn net_id(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

#[test]
fn the_protocol_as_docker_speaks_it() {
    require_root("tests/docker_plugin.rs");
    let dir = TempDir::new();
    let sock: PathBuf = dir.0.join("plugins/tapnet.sock");
    let arg = format!("unix://{}", sock.display());
    let mut d = Daemon::start_with(&["--docker-plugin", &arg], |_| {});
    // The plugin's socket is bound beside the API's, not necessarily
    // before the API's accepts (a full-suite run saw it missing).
    wait_until("the plugin socket", Duration::from_secs(10), || {
        sock.exists()
    });
    let ns = d.netns().name.clone();
    let call = |path: &str, body: &str| call(&ns, &sock, path, body);

    assert_eq!(
        call("/Plugin.Activate", ""),
        (200, json!({"Implements": ["NetworkDriver"]}))
    );
    assert_eq!(
        call("/NetworkDriver.GetCapabilities", ""),
        (200, json!({"Scope": "local", "ConnectivityScope": "local"}))
    );
    let (st, v) = call("/NetworkDriver.Nope", "{}");
    assert_eq!(st, 404, "{v}");

    // CreateNetwork as Docker sends it (gateway as a CIDR, IPv6Data []).
    let id = net_id('a');
    let create = |options: Value, pool: &str| {
        json!({
            "NetworkID": id,
            "Options": options,
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": pool.replace(".0/24", ".1/24"), "AuxAddresses": {}}],
            "IPv6Data": [],
        })
        .to_string()
    };
    let before = d.ok(&["network", "ls", "-q"]);
    for (opts, pool, needle) in [
        (
            json!({"com.docker.network.generic": {"zzz": "1"}}),
            "10.40.0.0/24",
            "unknown option zzz",
        ),
        (
            json!({"com.docker.network.generic": {"com.docker.network.driver.mtu": "9"}}),
            "10.40.0.0/24",
            "mtu",
        ),
        (
            json!({"com.docker.network.generic": {"com.docker.network.enable_ipv6": "maybe"}}),
            "10.40.0.0/24",
            "enable_ipv6",
        ),
        (json!({}), "127.0.0.0/24", "loopback"),
    ] {
        let (st, v) = call("/NetworkDriver.CreateNetwork", &create(opts, pool));
        assert_eq!(st, 500, "{v}");
        let err = v["Err"].as_str().unwrap_or_default();
        assert!(err.contains(needle), "{needle}: {v}");
        assert!(!err.contains('\n'));
    }
    assert_eq!(d.ok(&["network", "ls", "-q"]), before);
    let (st, v) = call("/NetworkDriver.CreateNetwork", "[1,2");
    assert_eq!(st, 500);
    assert!(
        v["Err"].as_str().unwrap().contains("malformed request"),
        "{v}"
    );

    let opts = json!({
        "com.docker.network.generic": {"com.docker.network.bridge.enable_icc": "false"},
        "com.docker.network.internal": true,
    });
    assert_eq!(
        call(
            "/NetworkDriver.CreateNetwork",
            &create(opts, "10.40.0.0/24")
        ),
        (200, json!({}))
    );
    let name = format!("docker-{}", &id[..12]);
    let v = d.inspect_network(&name);
    assert_eq!(v["Driver"], "docker");
    assert_eq!(v["Internal"], true);
    assert_eq!(
        v["Options"]["com.docker.network.bridge.enable_icc"],
        "false"
    );
    assert_eq!(v["IPAM"]["Config"][0]["Gateway"], "10.40.0.1");
    // A subnet overlapping it is refused.
    let other = json!({"NetworkID": net_id('b'), "Options": {}, "IPv4Data": [{"Pool": "10.40.0.0/16", "Gateway": "10.40.0.1/16"}]});
    let (st, v) = call("/NetworkDriver.CreateNetwork", &other.to_string());
    assert_eq!(st, 500);
    assert!(v["Err"].as_str().unwrap().contains("overlaps"), "{v}");

    // An endpoint: Docker's address, tapnet's MAC (derived from it, as
    // Docker's bridge does), the TAP made in the caller's namespace.
    let ep = net_id('e');
    let (st, v) = call(
        "/NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": id, "EndpointID": ep, "Interface": {"Address": "10.40.0.5/24", "AddressIPv6": "", "MacAddress": ""}, "Options": {}}).to_string(),
    );
    assert_eq!(st, 200, "{v}\n{}", d.log());
    assert_eq!(v["Interface"]["MacAddress"], "02:42:0a:28:00:05", "{v}");
    let tap = format!("tn{}", &ep[..13]);
    let link = d.netns().sh_ok(&format!(
        "cat /sys/class/net/{tap}/address 2>/dev/null || ip -o link show {tap}"
    ));
    assert!(link.contains("02:42:0a:28:00:05"), "{link}");
    let (st, v) = call(
        "/NetworkDriver.Join",
        &json!({"NetworkID": id, "EndpointID": ep, "SandboxKey": "/var/run/docker/netns/abc", "Options": {}}).to_string(),
    );
    assert_eq!(st, 200);
    // Internal: no gateway, so no default route.
    assert_eq!(
        v,
        json!({"InterfaceName": {"SrcName": tap, "DstPrefix": "eth"}})
    );
    // The same address again (a stale endpoint): Docker's IPAM wins.
    let ep2 = net_id('f');
    let (st, v) = call(
        "/NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": id, "EndpointID": ep2, "Interface": {"Address": "10.40.0.5/24", "MacAddress": "02:00:00:00:00:09"}}).to_string(),
    );
    assert_eq!((st, &v), (200, &json!({})), "a given MAC is not answered");
    let v = d.inspect_network(&name);
    assert_eq!(v["Containers"].as_object().unwrap().len(), 1, "{v}");
    assert!(v["Containers"].get(&ep2).is_some(), "{v}");
    let gone = d.netns().sh(&format!("ip link show {tap}"));
    assert_ne!(gone.code, 0, "the stale endpoint's TAP is left");
    // Leave, DeleteEndpoint, DeleteNetwork: nothing left.
    for (m, body) in [
        (
            "/NetworkDriver.Leave",
            json!({"NetworkID": id, "EndpointID": ep2}),
        ),
        (
            "/NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": id, "EndpointID": ep2}),
        ),
        ("/NetworkDriver.DeleteNetwork", json!({"NetworkID": id})),
    ] {
        assert_eq!(call(m, &body.to_string()), (200, json!({})), "{m}");
    }
    assert_eq!(d.ok(&["network", "ls", "-q"]), before);
    let links = d.netns().sh_ok("ip -o link show");
    assert!(!links.contains(": tn"), "{links}");
    // Deleting what is gone is not an error (Docker only logs them).
    assert_eq!(
        call(
            "/NetworkDriver.DeleteNetwork",
            &json!({"NetworkID": id}).to_string()
        ),
        (200, json!({}))
    );

    // Dual-stack: IPv6Data is the network's IPv6 pool; AddressIPv6 is the
    // endpoint's, never echoed back (libnetwork refuses a driver that
    // answers an address it gave); Join answers GatewayIPv6 (bare).
    let id6 = net_id('6');
    let v6net = json!({
        "NetworkID": id6,
        "Options": {"com.docker.network.enable_ipv6": true},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.41.0.0/24", "Gateway": "10.41.0.1/24", "AuxAddresses": {}}],
        "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": "2001:db8:41::/64", "Gateway": "2001:db8:41::1/64", "AuxAddresses": {}}],
    });
    assert_eq!(
        call("/NetworkDriver.CreateNetwork", &v6net.to_string()),
        (200, json!({}))
    );
    let v = d.inspect_network(&format!("docker-{}", &id6[..12]));
    assert_eq!(v["EnableIPv6"], true, "{v}");
    assert_eq!(v["IPAM"]["Config"][1]["Subnet"], "2001:db8:41::/64", "{v}");
    assert_eq!(v["IPAM"]["Config"][1]["Gateway"], "2001:db8:41::1", "{v}");
    let ep6 = net_id('7');
    let (st, v) = call(
        "/NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": id6, "EndpointID": ep6, "Interface": {"Address": "10.41.0.5/24", "AddressIPv6": "2001:db8:41::5/64", "MacAddress": ""}, "Options": {}}).to_string(),
    );
    assert_eq!(st, 200, "{v}\n{}", d.log());
    assert_eq!(
        v,
        json!({"Interface": {"MacAddress": "02:42:0a:29:00:05"}}),
        "only the MAC is filled in"
    );
    let (st, v) = call(
        "/NetworkDriver.Join",
        &json!({"NetworkID": id6, "EndpointID": ep6, "SandboxKey": "/var/run/docker/netns/abd", "Options": {}}).to_string(),
    );
    assert_eq!(st, 200);
    assert_eq!(v["Gateway"], "10.41.0.1", "{v}");
    assert_eq!(v["GatewayIPv6"], "2001:db8:41::1", "{v}");
    let v = d.inspect_network(&format!("docker-{}", &id6[..12]));
    assert!(v.to_string().contains("2001:db8:41::5"), "{v}");
    // An IPv6 address on an IPv4-only network, a malformed one: refused.
    let id4 = net_id('8');
    let v4net = json!({"NetworkID": id4, "Options": {}, "IPv4Data": [{"Pool": "10.42.0.0/24", "Gateway": "10.42.0.1/24"}], "IPv6Data": []});
    assert_eq!(
        call("/NetworkDriver.CreateNetwork", &v4net.to_string()),
        (200, json!({}))
    );
    for (net, a6) in [(&id4, "2001:db8:42::5/64"), (&id6, "zz::1::2/64")] {
        let (st, v) = call(
            "/NetworkDriver.CreateEndpoint",
            &json!({"NetworkID": net, "EndpointID": net_id('9'), "Interface": {"Address": "10.42.0.6/24", "AddressIPv6": a6}}).to_string(),
        );
        assert_eq!(st, 500, "{a6}: {v}");
        assert!(v["Err"].as_str().unwrap().contains("IPv6"), "{v}");
    }
    for (m, body) in [
        (
            "/NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": id6, "EndpointID": ep6}),
        ),
        ("/NetworkDriver.DeleteNetwork", json!({"NetworkID": id6})),
        ("/NetworkDriver.DeleteNetwork", json!({"NetworkID": id4})),
    ] {
        assert_eq!(call(m, &body.to_string()), (200, json!({})), "{m}");
    }
    assert_eq!(d.ok(&["network", "ls", "-q"]), before);

    // The socket goes with the daemon.
    d.stop();
    assert!(!sock.exists());
}

#[test]
fn plugin_socket_flags() {
    require_root("tests/docker_plugin.rs");
    let d = Daemon::start();
    // An explicit socket that cannot be made is fatal, in one line.
    let o = std::process::Command::new(BIN)
        .args(["daemon", "--root"])
        .arg(d.dir.0.join("other-root"))
        .args(["-H", &format!("unix://{}/o.sock", d.dir.0.display())])
        .args(["--docker-plugin", "unix:///proc/nope/tapnet.sock"])
        .env("TAPNET_LOG", "error")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--docker-plugin"), "{err}");
    let o = std::process::Command::new(BIN)
        .args(["daemon", "--docker-plugin", "tcp://1.2.3.4:1"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid --docker-plugin"));
}
