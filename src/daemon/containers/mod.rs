//! Containers (sandboxes) in the daemon, by operation:
//!
//! - `create`: `run`'s first step (name, network mode, endpoints allocated,
//!   the files bind-mounted into the sandbox) and `attach` (endpoints in an
//!   existing namespace);
//! - `lifecycle`: start (TAPs made inside the sandbox and plugged, ports
//!   published), exit, stop, rm, logs, the exit watcher, and recovery after
//!   a daemon restart;
//! - `connect`: `network connect|disconnect` at run time;
//! - `files`: `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`;
//! - `views`: `inspect` and `ps` in Docker's shapes.
//!
//! A container owns its endpoints ([`super::endpoints`]) while it is
//! created or running; when it exits they are released and the container
//! keeps the list of networks it asked for (Docker does the same).

use std::path::{Path, PathBuf};

use super::error::LookupError;
use crate::model::*;
use crate::sandbox::NetTarget;
use crate::state::State;

mod connect;
mod create;
mod files;
mod lifecycle;
mod views;

pub use lifecycle::{remove, stop, watch};

/// Whether `pid` is alive (not a zombie) and still the process that had
/// `start_time`.
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
    let state = rest.first().copied().unwrap_or("X");
    if state == "Z" || state == "X" || state == "x" {
        return false;
    }
    rest.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(start_time)
}

/// Finds a container by full id, name (with or without `/`), id prefix.
pub fn find_container<'a>(st: &'a State, key: &str) -> Result<&'a Container, LookupError> {
    let name = key.strip_prefix('/').unwrap_or(key);
    super::core::find_by_key(&st.containers, name, "container", |c| (&c.id, &c.name))
        .map_err(|e| e.unwrap_or_else(|| LookupError::Container(key.to_string())))
}

/// The namespace a container's interfaces live in, while it runs.
fn net_target(c: &Container) -> Option<NetTarget> {
    match &c.kind {
        Kind::Run => (c.pid > 0).then_some(NetTarget::Pid(c.pid)),
        Kind::AttachPid(p) => Some(NetTarget::Pid(*p)),
        Kind::AttachNetns(p) => Some(NetTarget::Path(PathBuf::from(p))),
    }
}

/// A container's endpoint records, in interface order.
fn endpoints_of<'a>(st: &'a State, c: &Container) -> Vec<&'a Endpoint> {
    c.endpoints
        .iter()
        .filter_map(|e| st.endpoints.get(e))
        .collect()
}

/// The owner record of a container's endpoints.
fn owner(id: &str) -> Owner {
    Owner::Container { id: id.to_string() }
}

fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join("containers").join(id)
}
