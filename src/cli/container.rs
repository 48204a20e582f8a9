//! Container verbs: `run`, `attach`, `ps`, `inspect`, `port`, `exec`,
//! `stop`, `rm`, `logs`; and `conntrack`.
//!
//! `run` flow: create at the daemon (addresses, files) -> spawn the sandbox
//! here -> start(pid) at the daemon (TAPs, switch ports) -> let CMD run ->
//! foreground: wait, report the exit code, `--rm` removes; `-d`: print the
//! id once the network is ready.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::{print_json, print_table};
use crate::client::{enc, Client};
use crate::daemon::types::*;
use crate::model::PortBinding;
use crate::sandbox::{self, NetMode, SandboxSpec, Stdio};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long = "detach")]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// NET | none | host | container:NAME | name=NET,ip=IP,alias=A,mac-address=MAC
    #[arg(long = "network", visible_alias = "net")]
    network: Vec<String>,
    /// Alias on the first network.
    #[arg(long = "network-alias", visible_alias = "net-alias")]
    network_alias: Vec<String>,
    /// IPv4 address on the first network.
    #[arg(long)]
    ip: Option<String>,
    /// IPv6 address on the first network.
    #[arg(long)]
    ip6: Option<String>,
    #[arg(long = "mac-address")]
    mac_address: Option<String>,
    /// Publish [IP:][HOSTPORT:]PORT[/tcp|udp].
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// CONTAINER[:ALIAS]
    #[arg(long)]
    link: Vec<String>,
    #[arg(long)]
    dns: Vec<String>,
    /// KEY=VALUE (or KEY: taken from the environment).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// A process whose network namespace gets the interfaces.
    #[arg(long, conflicts_with = "netns", required_unless_present = "netns")]
    pid: Option<i32>,
    /// A network namespace file (e.g. /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long = "network", visible_alias = "net")]
    network: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long = "all")]
    all: bool,
    /// Only IDs.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    #[arg(long)]
    format: Option<String>,
    #[arg(long = "no-trunc")]
    no_trunc: bool,
}

/// Parses one `--network` value into a mode or an attachment.
fn parse_network(v: &str) -> anyhow::Result<Result<String, NetworkAttach>> {
    if v == "none" || v == "host" || v.starts_with("container:") {
        return Ok(Ok(v.to_string()));
    }
    if !v.contains('=') {
        return Ok(Err(NetworkAttach {
            network: v.to_string(),
            ..Default::default()
        }));
    }
    let mut a = NetworkAttach::default();
    for kv in v.split(',') {
        let (k, val) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("invalid --network {v:?}: expected KEY=VALUE pairs"))?;
        match k {
            "name" => a.network = val.to_string(),
            "ip" => a.ipv4_address = Some(val.to_string()),
            "ip6" => a.ipv6_address = Some(val.to_string()),
            "alias" => a.aliases.push(val.to_string()),
            "mac-address" => a.mac_address = Some(val.to_string()),
            "link" => a.links.push(val.to_string()),
            _ => anyhow::bail!("invalid --network {v:?}: unknown key {k:?}"),
        }
    }
    if a.network.is_empty() {
        anyhow::bail!("invalid --network {v:?}: no name=");
    }
    Ok(Err(a))
}

fn env_pairs(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect()
}

fn kill_child(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    let p = nix::unistd::Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(p, None);
}

pub fn run(c: &Client, a: RunArgs) -> anyhow::Result<ExitCode> {
    for p in &a.publish {
        PortBinding::parse(p).map_err(anyhow::Error::msg)?;
    }
    let mut mode = None;
    let mut networks: Vec<NetworkAttach> = vec![];
    for n in &a.network {
        match parse_network(n)? {
            Ok(m) => {
                if mode.is_some() {
                    anyhow::bail!("conflicting options: more than one network mode ({n})");
                }
                mode = Some(m);
            }
            Err(att) => networks.push(att),
        }
    }
    if let (Some(m), false) = (&mode, networks.is_empty()) {
        anyhow::bail!("conflicting options: --network {m} cannot be combined with other networks");
    }
    if a.ip.is_some() || a.ip6.is_some() || a.mac_address.is_some() || !a.network_alias.is_empty() {
        if mode.is_some() {
            anyhow::bail!("conflicting options: --ip, --ip6, --mac-address and --network-alias need a bridge network");
        }
        if networks.is_empty() {
            networks.push(NetworkAttach {
                network: "bridge".into(),
                ..Default::default()
            });
        }
        let first = &mut networks[0];
        if a.ip.is_some() {
            first.ipv4_address = a.ip.clone();
        }
        if a.ip6.is_some() {
            first.ipv6_address = a.ip6.clone();
        }
        if a.mac_address.is_some() {
            first.mac_address = a.mac_address.clone();
        }
        first.aliases.extend(a.network_alias.iter().cloned());
    }
    let env: Vec<String> = a
        .env
        .iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect();
    let req = ContainerCreate {
        name: a.name.clone(),
        hostname: a.hostname.clone(),
        network_mode: mode,
        networks,
        env: env.clone(),
        cmd: a.cmd.clone(),
        ports: a.publish.clone(),
        dns: a.dns.clone(),
        links: a.link.clone(),
        auto_remove: a.rm,
    };
    let created: ContainerCreateResponse = c.post("/containers/create", &req)?;
    let id = created.id.clone();
    let cleanup = |why: anyhow::Error| -> anyhow::Error {
        let _ = c.delete(&format!("/containers/{id}?force=1"));
        why
    };
    let spec = SandboxSpec {
        hostname: created.hostname.clone(),
        net: match created.join_pid {
            Some(p) => NetMode::Join(p),
            None => NetMode::New,
        },
        files: vec![
            (created.hosts_path.clone().into(), "/etc/hosts".into()),
            (
                created.resolv_conf_path.clone().into(),
                "/etc/resolv.conf".into(),
            ),
            (created.hostname_path.clone().into(), "/etc/hostname".into()),
        ],
        hide: created.hide_paths.iter().map(PathBuf::from).collect(),
        env: env_pairs(&env),
        cmd: a.cmd.clone(),
        stdio: if a.detach {
            Stdio::Log(created.log_path.clone().into())
        } else {
            Stdio::Inherit
        },
    };
    let sb = Sandbox::spawn(&spec)
        .context("cannot create the sandbox")
        .map_err(cleanup)?;
    let pid = sb.pid;
    if let Err(e) = c.post_ok(
        &format!("/containers/{id}/start"),
        Some(&ContainerStart { pid }),
    ) {
        drop(sb); // the sandbox exits and is reaped
        return Err(cleanup(e.into()));
    }
    let running = match sb.start() {
        Ok(r) => r,
        Err(e) => {
            kill_child(pid);
            return Err(cleanup(e.context("cannot start the command")));
        }
    };
    if a.detach {
        println!("{id}");
        std::io::stdout().flush().ok();
        // The sandbox goes on without us (whatever `Running` may do on drop).
        #[allow(clippy::forget_non_drop)]
        std::mem::forget(running);
        return Ok(ExitCode::SUCCESS);
    }
    let code = running.wait().context("waiting for the command")?;
    let _ = c.post_ok(
        &format!("/containers/{id}/exited"),
        Some(&ContainerExited { exit_code: code }),
    );
    if a.rm {
        match c.delete(&format!("/containers/{id}?force=1")) {
            Err(e) if e.status() != Some(404) => eprintln!("{e}"),
            _ => {}
        }
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

use crate::sandbox::Sandbox;

pub fn attach(c: &Client, a: AttachArgs) -> anyhow::Result<ExitCode> {
    let mut networks = vec![];
    for n in &a.network {
        match parse_network(n)? {
            Ok(m) => anyhow::bail!("attach: --network {m} is not possible, only bridge networks"),
            Err(att) => networks.push(att),
        }
    }
    let netns = match &a.netns {
        Some(p) => Some(
            std::fs::canonicalize(p)
                .with_context(|| format!("network namespace {}", p.display()))?
                .display()
                .to_string(),
        ),
        None => None,
    };
    let req = AttachRequest {
        pid: a.pid,
        netns,
        name: a.name.clone(),
        networks,
    };
    let r: IdResponse = c.post("/tapnet/attach", &req)?;
    println!("{}", r.id);
    Ok(ExitCode::SUCCESS)
}

fn short(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id[..12.min(id.len())].to_string()
    }
}

fn ago(unix: i64) -> String {
    let secs = chrono::Utc::now().timestamp() - unix;
    match secs {
        s if s < 1 => "Less than a second ago".into(),
        1 => "1 second ago".into(),
        s if s < 60 => format!("{s} seconds ago"),
        s if s < 120 => "About a minute ago".into(),
        s if s < 3600 => format!("{} minutes ago", s / 60),
        s if s < 7200 => "About an hour ago".into(),
        s if s < 48 * 3600 => format!("{} hours ago", s / 3600),
        s => format!("{} days ago", s / 86400),
    }
}

fn ports_text(v: &Value) -> String {
    v["Ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| match p.get("PublicPort") {
                    Some(pp) => format!(
                        "{}->{}/{}",
                        host_port_text(p["IP"].as_str().unwrap_or(""), &pp.to_string()),
                        p["PrivatePort"],
                        p["Type"].as_str().unwrap_or("")
                    ),
                    None => format!("{}/{}", p["PrivatePort"], p["Type"].as_str().unwrap_or("")),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub fn ps(c: &Client, a: PsArgs) -> anyhow::Result<ExitCode> {
    let path = if a.all {
        "/containers/json?all=1"
    } else {
        "/containers/json"
    };
    let list: Vec<Value> = c.get(path)?;
    let name = |v: &Value| {
        v["Names"][0]
            .as_str()
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string()
    };
    if a.quiet {
        for v in &list {
            println!("{}", short(v["Id"].as_str().unwrap_or(""), a.no_trunc));
        }
        return Ok(ExitCode::SUCCESS);
    }
    match a.format.as_deref() {
        None | Some("table") => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|v| {
                    let mut cmd = v["Command"].as_str().unwrap_or("").to_string();
                    if !a.no_trunc && cmd.chars().count() > 20 {
                        cmd = cmd.chars().take(19).collect::<String>() + "…";
                    }
                    vec![
                        short(v["Id"].as_str().unwrap_or(""), a.no_trunc),
                        format!("\"{cmd}\""),
                        ago(v["Created"].as_i64().unwrap_or(0)),
                        v["Status"].as_str().unwrap_or("").to_string(),
                        ports_text(v),
                        name(v),
                    ]
                })
                .collect();
            print_table(
                &[
                    "CONTAINER ID",
                    "COMMAND",
                    "CREATED",
                    "STATUS",
                    "PORTS",
                    "NAMES",
                ],
                &rows,
            );
        }
        Some("json") => {
            for v in &list {
                let nets: Vec<String> = v["NetworkSettings"]["Networks"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let created =
                    chrono::DateTime::from_timestamp(v["Created"].as_i64().unwrap_or(0), 0)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({
                        "Command": format!("\"{}\"", v["Command"].as_str().unwrap_or("")),
                        "CreatedAt": created,
                        "ID": short(v["Id"].as_str().unwrap_or(""), a.no_trunc),
                        "Names": name(v),
                        "Networks": nets.join(","),
                        "Ports": ports_text(v),
                        "State": v["State"],
                        "Status": v["Status"],
                    })
                );
            }
        }
        Some(f) => anyhow::bail!("unsupported --format {f:?} (json or table)"),
    }
    Ok(ExitCode::SUCCESS)
}

fn get_container(c: &Client, key: &str) -> anyhow::Result<Value> {
    Ok(c.get(&format!("/containers/{}/json", enc(key)))?)
}

pub fn inspect(c: &Client, keys: &[String]) -> anyhow::Result<ExitCode> {
    let mut out = vec![];
    let mut failed = None;
    for k in keys {
        match get_container(c, k) {
            Ok(v) => out.push(v),
            Err(e) => failed = Some(e),
        }
    }
    if !out.is_empty() || failed.is_none() {
        print_json(&out)?;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `HostIp` + `HostPort` as Go's `net.JoinHostPort` (IPv6 in brackets).
fn host_port_text(ip: &str, port: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// `tapnet port CONTAINER [PRIVATE_PORT[/PROTO]]`, as `docker port`:
/// `80/tcp -> 0.0.0.0:8080` per mapping, or only the host addresses of one
/// private port.
pub fn port(c: &Client, key: &str, filter: Option<&str>) -> anyhow::Result<ExitCode> {
    let v = get_container(c, key)?;
    let filter = match filter {
        None => None,
        Some(f) => {
            let (p, proto) = f.split_once('/').unwrap_or((f, "tcp"));
            match (p.parse::<u16>(), proto) {
                (Ok(n), "tcp" | "udp") if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => {}
                _ => anyhow::bail!("invalid port {f:?}: expected PORT[/tcp|udp]"),
            }
            Some(format!("{p}/{proto}"))
        }
    };
    // (private port, proto, host address) in the order of the ports.
    let mut rows: Vec<(u16, String, String)> = vec![];
    if let Some(m) = v["NetworkSettings"]["Ports"].as_object() {
        for (cport, binds) in m {
            let (n, proto) = cport.split_once('/').unwrap_or((cport.as_str(), "tcp"));
            for b in binds.as_array().into_iter().flatten() {
                let hp = b["HostPort"].as_str().unwrap_or("");
                if !hp.is_empty() {
                    rows.push((
                        n.parse().unwrap_or(0),
                        proto.to_string(),
                        host_port_text(b["HostIp"].as_str().unwrap_or("0.0.0.0"), hp),
                    ));
                }
            }
        }
    }
    rows.sort();
    match filter {
        None => {
            for (p, proto, host) in rows {
                println!("{p}/{proto} -> {host}");
            }
        }
        Some(f) => {
            let hits: Vec<&String> = rows
                .iter()
                .filter(|(p, proto, _)| format!("{p}/{proto}") == f)
                .map(|(_, _, h)| h)
                .collect();
            if hits.is_empty() {
                anyhow::bail!("no public port '{f}' published for {key}");
            }
            for h in hits {
                println!("{h}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ConntrackArgs {
    /// `ls` (the default): the flows; `stats`: the table's counters.
    #[arg(value_parser = ["ls", "list", "stats"])]
    verb: Option<String>,
    /// Only this container's flows.
    #[arg(long)]
    container: Option<String>,
    /// `table` (default) or `json`.
    #[arg(long)]
    format: Option<String>,
}

/// `key.sub value` lines of a JSON object (`conntrack stats`).
fn print_flat(prefix: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                print_flat(&key, v);
            }
        }
        v => println!("{prefix} {v}"),
    }
}

/// Seconds as `45s`, `3m12s`, `2h05m`.
fn secs_text(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `tapnet conntrack [ls] [--container C] [--format json]`.
pub fn conntrack(c: &Client, a: ConntrackArgs) -> anyhow::Result<ExitCode> {
    let json = match a.format.as_deref() {
        None | Some("table") => false,
        Some("json") => true,
        Some(f) => anyhow::bail!("unsupported --format {f:?} (json or table)"),
    };
    if a.verb.as_deref() == Some("stats") {
        if a.container.is_some() {
            anyhow::bail!("conntrack stats: --container applies to ls only");
        }
        let v: serde_json::Value = c.get("/tapnet/conntrack/stats")?;
        if json {
            print_json(&v)?;
        } else {
            print_flat("", &v);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = match &a.container {
        Some(k) => format!("/tapnet/conntrack?container={}", enc(k)),
        None => "/tapnet/conntrack".to_string(),
    };
    let rows: Vec<ConntrackRow> = c.get(&path)?;
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let addr = |ip: std::net::IpAddr, port: u16| std::net::SocketAddr::new(ip, port).to_string();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.protocol.clone(),
                r.direction.clone(),
                r.state.clone(),
                if r.container.is_empty() {
                    "-".into()
                } else {
                    r.container.clone()
                },
                addr(r.container_ip, r.container_port),
                addr(r.remote_ip, r.remote_port),
                r.host_addr
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.packets_out.to_string(),
                r.bytes_out.to_string(),
                r.packets_in.to_string(),
                r.bytes_in.to_string(),
                secs_text(r.age_secs),
                secs_text(r.expires_secs),
            ]
        })
        .collect();
    print_table(
        &[
            "PROTO",
            "DIR",
            "STATE",
            "CONTAINER",
            "CONTAINER-ADDR",
            "REMOTE-ADDR",
            "HOST-ADDR",
            "PKTS-OUT",
            "BYTES-OUT",
            "PKTS-IN",
            "BYTES-IN",
            "AGE",
            "EXPIRES",
        ],
        &table,
    );
    Ok(ExitCode::SUCCESS)
}

pub fn exec(c: &Client, key: &str, cmd: &[String]) -> anyhow::Result<ExitCode> {
    let v = get_container(c, key)?;
    if !v["State"]["Running"].as_bool().unwrap_or(false) {
        anyhow::bail!("container {key} is not running");
    }
    let pid = v["State"]["Pid"].as_i64().unwrap_or(0) as i32;
    let env: Vec<String> = v["Config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let code = sandbox::exec_in(pid, cmd, &env_pairs(&env))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

pub fn stop(c: &Client, time: u64, keys: &[String]) -> anyhow::Result<ExitCode> {
    Ok(super::for_each_key(keys, |k| {
        c.post_ok(
            &format!("/containers/{}/stop?t={time}", enc(k)),
            None::<&()>,
        )
    }))
}

pub fn rm(c: &Client, force: bool, keys: &[String]) -> anyhow::Result<ExitCode> {
    let q = if force { "?force=1" } else { "" };
    Ok(super::for_each_key(keys, |k| {
        c.delete(&format!("/containers/{}{q}", enc(k)))
    }))
}

pub fn logs(c: &Client, key: &str) -> anyhow::Result<ExitCode> {
    let r = c.request("GET", &format!("/containers/{}/logs", enc(key)), None)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&r.body)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
