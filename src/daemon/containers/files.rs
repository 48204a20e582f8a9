//! The files bind-mounted into a `run` sandbox: `/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname`, and the `run -d` log. They are
//! rewritten in place (same inode) so that the sandbox sees each change.

use std::path::Path;

use super::{container_dir, endpoints_of, find_container};
use crate::drivers;
use crate::model::*;
use crate::state::State;

/// The host's nameservers (loopback ones left out: they do not answer
/// inside a sandbox) and its `search`/`options` lines.
fn host_resolv_nameservers() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut ns = vec![];
    let mut other = vec![];
    for l in text.lines() {
        let l = l.trim();
        if let Some(a) = l.strip_prefix("nameserver") {
            let a = a.trim();
            if !a.starts_with("127.") && a != "::1" {
                ns.push(a.to_string());
            }
        } else if l.starts_with("search") || l.starts_with("options") {
            other.push(l.to_string());
        }
    }
    (ns, other)
}

/// The address of the embedded DNS a container uses, if any.
///
/// Docker's rule: a container on at least one user-defined network uses
/// the embedded DNS (here: its address on the first such network, the
/// gateway on a bridge, `macvlan::DNS_ADDR` on macvlan/ipvlan:
/// [`drivers::NetworkDriver::dns_address`]) as its only nameserver; it
/// switches when the container joins its first user-defined network and
/// back when it leaves the last one. The default bridge has no embedded
/// DNS.
fn embedded_dns(st: &State, c: &Container) -> Option<std::net::Ipv4Addr> {
    if c.net_mode != NetMode::Bridge {
        return None;
    }
    endpoints_of(st, c).into_iter().find_map(|e| {
        let n = st.networks.get(&e.network_id)?;
        drivers::of(n).dns_address(n, e.gateway)
    })
}

/// Writes (in place: the files are bind-mounted into the sandbox) the
/// container's hosts, resolv.conf and hostname, and makes its log file
/// (owner-only).
pub(super) fn write(st: &State, root: &Path, c: &Container) -> std::io::Result<()> {
    let dir = container_dir(root, &c.id);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
    }
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for l in &c.links {
        let (target, alias) = l.split_once(':').unwrap_or((l.as_str(), l.as_str()));
        if let Ok(t) = find_container(st, target) {
            let eps = endpoints_of(st, t);
            let mut names = vec![alias.to_string()];
            if alias != t.name {
                names.push(t.name.clone());
            }
            names.push(t.short_id().to_string());
            if let Some(ip) = eps.iter().find_map(|e| e.ipv4) {
                hosts.push_str(&format!("{}\t{}\n", ip.addr(), names.join(" ")));
            }
            if let Some(ip) = eps.iter().find_map(|e| e.ipv6) {
                hosts.push_str(&format!("{}\t{}\n", ip.addr(), names.join(" ")));
            }
        }
    }
    for e in endpoints_of(st, c) {
        if let Some(ip) = e.ipv4 {
            hosts.push_str(&format!("{}\t{}\n", ip.addr(), c.hostname));
        }
        if let Some(ip) = e.ipv6 {
            hosts.push_str(&format!("{}\t{}\n", ip.addr(), c.hostname));
        }
    }
    let (host_ns, host_other) = host_resolv_nameservers();
    let dns_gw = embedded_dns(st, c);
    let embedded = dns_gw.is_some();
    let nameservers: Vec<String> = if let Some(gw) = dns_gw {
        vec![gw.to_string()]
    } else if !c.dns.is_empty() {
        c.dns.iter().map(|d| d.to_string()).collect()
    } else if !host_ns.is_empty() {
        host_ns
    } else {
        vec!["8.8.8.8".into(), "8.8.4.4".into()]
    };
    let mut resolv = String::new();
    for ns in nameservers {
        resolv.push_str(&format!("nameserver {ns}\n"));
    }
    for l in host_other {
        if embedded && l.starts_with("options") {
            continue;
        }
        resolv.push_str(&l);
        resolv.push('\n');
    }
    if embedded {
        resolv.push_str("options ndots:0\n");
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    std::fs::write(dir.join("hostname"), format!("{}\n", c.hostname))?;
    // The `run -d` log holds the command's output: owner-only from the
    // start (the sandbox appends to it).
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join("log"))?;
    }
    Ok(())
}
