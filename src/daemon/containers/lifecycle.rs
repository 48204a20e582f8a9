//! A container's life after create: start (its endpoints plugged into the
//! sandbox, its ports published), exit (unplugged, addresses released),
//! stop and rm, logs, the exit watcher, and recovery after a daemon
//! restart (half-made containers rolled back, live ones' TAPs reopened).

use std::path::Path;
use std::time::{Duration, Instant};

use super::super::core::Core;
use super::super::endpoints::{self, DnsNames};
use super::super::error::ContainerError;
use super::super::{call, Shared};
use super::{container_dir, endpoints_of, find_container, net_target};
use crate::model::*;
use crate::sandbox::{self, NetTarget};

impl Core {
    /// `POST /containers/{id}/start`: the sandbox process `pid` is ready;
    /// host ports are bound first (a taken port fails before anything is
    /// made), then the endpoints are plugged into its namespace and the
    /// ports published; one commit, everything undone when a step fails.
    pub fn start_container(&mut self, key: &str, pid: i32) -> Result<(), ContainerError> {
        let c = find_container(self.store.state(), key)?.clone();
        if c.status != Status::Created {
            return Err(ContainerError::NotCreated {
                name: c.name.clone(),
                status: c.status,
            });
        }
        let start_time = sandbox::process_start_time(pid)
            .filter(|_| pid > 0)
            .ok_or(ContainerError::NoProcess(pid))?;
        let mut next = self.store.prepare();
        {
            let nc = next.containers.get_mut(&c.id).expect("found in this state");
            nc.status = Status::Running;
            nc.pid = pid;
            nc.start_time = start_time;
            nc.started_at = Some(now_rfc3339());
        }
        // The sockets close when dropped, on any error below.
        let bound = self.bind_ports(&next, &c)?;
        let target = NetTarget::Pid(pid);
        let names = DnsNames::of(&c);
        self.plug(&mut next, &c.endpoints, &target, Some(&names), false)?;
        let published = match self.publish_ports(&next, &c, bound) {
            Ok(p) => p,
            Err(e) => {
                self.unplug_and_delete(&next, &target, &c.endpoints);
                return Err(e.into());
            }
        };
        next.containers
            .get_mut(&c.id)
            .expect("found in this state")
            .published = published;
        let snapshot = next.clone();
        if let Err(e) = self.store.commit(next) {
            self.unpublish_ports(&c.id);
            self.unplug_and_delete(&snapshot, &target, &c.endpoints);
            return Err(e.into());
        }
        Ok(())
    }

    /// A container's process is gone (or it was stopped/detached): remove
    /// its ports, release its addresses, mark it exited (or remove it when
    /// it was `--rm`). Nothing to do for an exited container.
    pub fn container_exited(&mut self, key: &str, code: Option<i32>) -> Result<(), ContainerError> {
        let st = self.store.state().clone();
        let c = find_container(&st, key)?.clone();
        if c.status == Status::Exited {
            return Ok(());
        }
        self.unpublish_ports(&c.id);
        for e in &c.endpoints {
            self.unplug(&st, e);
        }
        if matches!(c.kind, Kind::AttachPid(_) | Kind::AttachNetns(_)) {
            let names: Vec<String> = endpoints_of(&st, &c)
                .iter()
                .map(|e| e.ifname.clone())
                .collect();
            if let Some(t) = net_target(&c) {
                if let Err(e) = sandbox::delete_taps(&t, &names) {
                    tracing::warn!("container {}: cannot delete its interfaces: {e:#}", c.name);
                }
            }
        }
        let remove = c.auto_remove;
        self.release_global(&st, &c.endpoints);
        self.store.transact(|st| {
            for e in &c.endpoints {
                endpoints::release(st, e);
            }
            if remove {
                st.containers.remove(&c.id);
            } else if let Some(x) = st.containers.get_mut(&c.id) {
                x.endpoints.clear();
                x.published.clear();
                x.status = Status::Exited;
                x.exit_code = code;
                x.finished_at = Some(now_rfc3339());
            }
            Ok::<_, ContainerError>(())
        })?;
        if remove {
            let _ = std::fs::remove_dir_all(container_dir(&self.root, &c.id));
        }
        Ok(())
    }

    /// `POST /containers/{id}/exited`: the CLI that waited for CMD reports
    /// its exit code, which wins over any guess made when it was stopped.
    pub fn report_exit(&mut self, key: &str, code: i32) -> Result<(), ContainerError> {
        let c = find_container(self.store.state(), key)?.clone();
        if c.status != Status::Exited {
            return self.container_exited(&c.id, Some(code));
        }
        self.store.transact(|st| {
            if let Some(x) = st.containers.get_mut(&c.id) {
                x.exit_code = Some(code);
            }
            Ok::<_, ContainerError>(())
        })
    }

    /// Removes a container that is not running.
    fn remove_record(&mut self, id: &str) -> Result<(), ContainerError> {
        let st = self.store.state().clone();
        let c = find_container(&st, id)?.clone();
        if c.status == Status::Running {
            return Err(ContainerError::Running(c.id));
        }
        self.unpublish_ports(&c.id);
        for e in &c.endpoints {
            self.unplug(&st, e);
        }
        self.release_global(&st, &c.endpoints);
        self.store.transact(|st| {
            for e in &c.endpoints {
                endpoints::release(st, e);
            }
            st.containers.remove(&c.id);
            Ok::<_, ContainerError>(())
        })?;
        let _ = std::fs::remove_dir_all(container_dir(&self.root, &c.id));
        Ok(())
    }

    pub fn container_logs(&self, key: &str) -> Result<Vec<u8>, ContainerError> {
        let c = find_container(self.store.state(), key)?;
        let path = container_dir(&self.root, &c.id).join("log");
        match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(err) => Err(ContainerError::Logs {
                path: path.display().to_string(),
                err,
            }),
        }
    }

    // ---- watcher and recovery ----------------------------------------------

    /// A container still `created` when the daemon starts was half-made:
    /// its `run` got an error when the previous daemon died between create
    /// and start (tapnet has no separate `create` verb). Remove it and
    /// release its addresses, so that a failed change leaves nothing behind
    /// across a crash too.
    fn roll_back_created(&mut self) {
        let half: Vec<Container> = self
            .store
            .state()
            .containers
            .values()
            .filter(|c| c.status == Status::Created)
            .cloned()
            .collect();
        if half.is_empty() {
            return;
        }
        let st0 = self.store.state().clone();
        for c in &half {
            self.release_global(&st0, &c.endpoints);
        }
        let r = self.store.transact(|st| {
            for c in &half {
                for e in &c.endpoints {
                    endpoints::release(st, e);
                }
                st.containers.remove(&c.id);
            }
            Ok::<_, ContainerError>(())
        });
        match r {
            Ok(()) => {
                for c in &half {
                    tracing::warn!(
                        "container {} ({}) was being created when the daemon stopped: removed it and released its addresses",
                        c.name,
                        c.short_id()
                    );
                    let _ = std::fs::remove_dir_all(container_dir(&self.root, &c.id));
                }
            }
            Err(e) => tracing::error!("cannot roll back half-made containers: {e}"),
        }
    }

    /// Containers whose process is gone.
    fn dead_containers(&self) -> Vec<String> {
        self.store
            .state()
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
            .filter(|c| match &c.kind {
                Kind::Run | Kind::AttachPid(_) => !super::is_alive(c.pid, c.start_time),
                Kind::AttachNetns(p) => !Path::new(p).exists(),
            })
            .map(|c| c.id.clone())
            .collect()
    }

    pub fn reap(&mut self) {
        for id in self.dead_containers() {
            if let Err(e) = self.container_exited(&id, None) {
                tracing::warn!("container {id}: {e}");
            }
        }
    }

    /// After a restart: roll back containers that were half-made when the
    /// previous daemon died, mark dead ones exited, reopen the TAPs of live
    /// ones and publish their ports again (on the same host ports).
    pub(in super::super) fn recover_containers(&mut self) {
        self.roll_back_created();
        self.reap();
        let mut st = self.store.state().clone();
        let live: Vec<Container> = st
            .containers
            .values()
            .filter(|c| c.status == Status::Running)
            .cloned()
            .collect();
        for c in live {
            if c.endpoints.is_empty() {
                continue;
            }
            // Records from before endpoints knew their namespace.
            if let Some(t) = net_target(&c) {
                for id in &c.endpoints {
                    if let Some(e) = st.endpoints.get_mut(id) {
                        e.netns.get_or_insert_with(|| endpoints::netns_ref(&t));
                    }
                }
            }
            let eps: Vec<Endpoint> = endpoints_of(&st, &c).into_iter().cloned().collect();
            let refs: Vec<&Endpoint> = eps.iter().collect();
            let names = DnsNames::of(&c);
            if let Err(e) = self.reopen(&st, &refs, Some(&names)) {
                tracing::warn!(
                    "container {}: cannot reopen its interfaces ({e}); marking it exited",
                    c.name
                );
                let _ = self.container_exited(&c.id, None);
                st = self.store.state().clone();
                continue;
            }
            let bound = self.rebind_ports(&c);
            let published = self.publish_ports(&st, &c, bound).unwrap_or_else(|e| {
                tracing::warn!("container {}: {e}", c.name);
                vec![]
            });
            let id = c.id.clone();
            let r = self.store.transact(|next| {
                if let Some(x) = next.containers.get_mut(&id) {
                    x.published = published;
                }
                for e in &eps {
                    next.endpoints.insert(e.id.clone(), e.clone());
                }
                Ok::<_, ContainerError>(())
            });
            if let Err(e) = r {
                tracing::warn!("container {}: {e}", c.name);
            }
        }
    }
}

/// The exit watcher: polls live containers' processes.
pub async fn watch(core: Shared, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        // On a blocking thread: the lock may be held by a slow operation.
        let _ = call(&core, |c| {
            if !c.dead_containers().is_empty() {
                c.reap();
            }
            Ok::<_, ContainerError>(())
        })
        .await;
    }
}

/// Sends `sig` to a container's process after checking that the pid is
/// still the same process, and to every other process of the container
/// (its mount namespace: what `tapnet exec` started, in whatever process
/// group), as Docker's stop and kill reach its whole cgroup.
fn signal(pid: i32, start_time: u64, sig: nix::sys::signal::Signal) {
    if super::is_alive(pid, start_time) {
        for m in crate::sandbox::mount_namespace_members(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(m), sig);
        }
        let p = nix::unistd::Pid::from_raw(pid);
        // A detached sandbox leads its own session and process group: signal
        // the whole group so that CMD's children go too (there is no pid
        // namespace). A foreground one shares the CLI's group: only CMD.
        if nix::unistd::getpgid(Some(p)) == Ok(p) {
            let _ = nix::sys::signal::killpg(p, sig);
        } else {
            let _ = nix::sys::signal::kill(p, sig);
        }
    }
}

async fn wait_dead(pid: i32, start_time: u64, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if !super::is_alive(pid, start_time) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !super::is_alive(pid, start_time)
}

/// `POST /containers/{id}/stop`: SIGTERM, `t` seconds, SIGKILL. Attached
/// namespaces are detached (their process is not ours to kill).
pub async fn stop(core: &Shared, key: String, t: u64) -> Result<(), ContainerError> {
    let c = call(core, move |c| {
        Ok::<_, ContainerError>(find_container(c.store.state(), &key)?.clone())
    })
    .await?;
    if c.status != Status::Running {
        return Ok(());
    }
    let mut code = None;
    if c.kind == Kind::Run {
        use nix::sys::signal::Signal;
        signal(c.pid, c.start_time, Signal::SIGTERM);
        // Not our child: the real status is unknown unless the foreground
        // CLI reports it; assume death by the signal sent.
        code = Some(143);
        if !wait_dead(c.pid, c.start_time, Duration::from_secs(t)).await {
            signal(c.pid, c.start_time, Signal::SIGKILL);
            wait_dead(c.pid, c.start_time, Duration::from_secs(5)).await;
            code = Some(137);
        }
    }
    let id = c.id.clone();
    call(core, move |core| core.container_exited(&id, code)).await
}

/// `DELETE /containers/{id}[?force=1]`.
pub async fn remove(core: &Shared, key: String, force: bool) -> Result<(), ContainerError> {
    let c = call(core, move |c| {
        Ok::<_, ContainerError>(find_container(c.store.state(), &key)?.clone())
    })
    .await?;
    if c.status == Status::Running {
        if !force {
            return Err(ContainerError::Running(c.id));
        }
        if c.kind == Kind::Run {
            signal(c.pid, c.start_time, nix::sys::signal::Signal::SIGKILL);
            wait_dead(c.pid, c.start_time, Duration::from_secs(5)).await;
        }
        let id = c.id.clone();
        call(core, move |core| core.container_exited(&id, Some(137))).await?;
    }
    let id = c.id.clone();
    call(core, move |core| match core.remove_record(&id) {
        // --rm already removed it.
        Err(ContainerError::Lookup(super::super::error::LookupError::Container(_))) => Ok(()),
        r => r,
    })
    .await
}
