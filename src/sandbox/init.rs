//! `tapnet __sandbox-init`: the sandbox process, and `exec` into it.
//!
//! Protocol, over a `SOCK_SEQPACKET` pair whose child end is the init's
//! fd 3: the parent sends one JSON [`InitSpec`]; the init sets up its
//! namespaces and answers `ok` or `err: MESSAGE`; then it waits for `go`
//! (from [`super::Sandbox::start`]) and execs CMD. The socket is
//! close-on-exec: the parent reads EOF once CMD runs, or `err: MESSAGE` if
//! the exec failed. EOF instead of `go` (the parent gave up) makes the init
//! exit.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio as ProcStdio};

use anyhow::Context;
use nix::mount::MsFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{NetMode, SandboxSpec, Stdio};
use crate::sys::fdpass;
use crate::sys::netlink::Netlink;
use crate::sys::ns::{self, CloneFlags};
use crate::sys::process;

/// PATH given to CMD when the spec's env has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long the init may take to get ready (or to exec CMD).
const INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The fd number of the control socket in the init process.
const CONTROL_FD: i32 = 3;

#[derive(Serialize, Deserialize, Debug)]
struct InitSpec {
    hostname: String,
    /// `None`: a new network namespace; `Some(pid)`: join that process's.
    join_net: Option<i32>,
    files: Vec<(PathBuf, PathBuf)>,
    /// Paths covered inside the sandbox (see [`SandboxSpec::hide`]).
    #[serde(default)]
    hide: Vec<PathBuf>,
    env: Vec<(String, String)>,
    cmd: Vec<String>,
    /// New session (detached `run -d`).
    setsid: bool,
}

/// The parent's side of [`super::Sandbox::spawn`]: returns the pid and the
/// control socket once the sandbox is ready.
pub(super) fn spawn(spec: &SandboxSpec) -> anyhow::Result<(i32, OwnedFd)> {
    if spec.cmd.is_empty() {
        anyhow::bail!("no command to run");
    }
    let exe = super::helper_exe()?;
    let init = InitSpec {
        hostname: spec.hostname.clone(),
        join_net: match spec.net {
            NetMode::New => None,
            NetMode::Join(pid) => Some(pid),
        },
        files: spec.files.clone(),
        hide: spec.hide.clone(),
        env: spec.env.clone(),
        cmd: spec.cmd.clone(),
        setsid: matches!(spec.stdio, Stdio::Log(_)),
    };
    let (ours, theirs) = fdpass::seqpacket_pair().context("create the sandbox control socket")?;
    let mut cmd = Command::new(&exe);
    cmd.arg("__sandbox-init");
    if let Stdio::Log(path) = &spec.stdio {
        use std::os::unix::fs::OpenOptionsExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("open log file {}", path.display()))?;
        let log2 = log
            .try_clone()
            .with_context(|| format!("dup log file {}", path.display()))?;
        cmd.stdin(ProcStdio::null()).stdout(log).stderr(log2);
    }
    process::place_fd(&mut cmd, theirs, CONTROL_FD);
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn sandbox init {}", exe.display()))?;
    drop(cmd);
    let pid = i32::try_from(child.id()).context("sandbox pid out of range")?;
    let fail = |e: anyhow::Error| {
        let timed_out = e
            .downcast_ref::<fdpass::FdPassError>()
            .is_some_and(|e| matches!(e, fdpass::FdPassError::TimedOut));
        if timed_out {
            // Our own child, by its pid; reaped just below.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        drop(child_reap(pid));
        if timed_out {
            anyhow::anyhow!(
                "sandbox init did not get ready within {}s",
                INIT_TIMEOUT.as_secs()
            )
        } else {
            e
        }
    };
    fdpass::set_recv_timeout(&ours, INIT_TIMEOUT)
        .map_err(anyhow::Error::from)
        .map_err(fail)?;
    let json = serde_json::to_vec(&init)
        .context("encode sandbox spec")
        .map_err(fail)?;
    fdpass::send(&ours, &json, &[])
        .context("send the spec to the sandbox init")
        .map_err(fail)?;
    match recv_line(&ours).map_err(fail)? {
        Some(line) if line == "ok" => Ok((pid, ours)),
        Some(line) => Err(fail(anyhow::anyhow!(line
            .strip_prefix("err: ")
            .unwrap_or(&line)
            .to_string()))),
        None => {
            let status = child_reap(pid);
            anyhow::bail!("sandbox init exited before it was ready ({status})")
        }
    }
}

/// The parent's side of [`super::Sandbox::start`].
pub(super) fn start(pid: i32, control: OwnedFd) -> anyhow::Result<()> {
    fdpass::send(&control, b"go", &[]).context("tell the sandbox to start")?;
    match recv_line(&control)? {
        None => Ok(()),
        Some(line) => {
            drop(child_reap(pid));
            Err(anyhow::anyhow!(line
                .strip_prefix("err: ")
                .unwrap_or(&line)
                .to_string()))
        }
    }
}

/// Waits for child `pid`; its exit code, or 128+signal.
pub(super) fn wait(pid: i32) -> anyhow::Result<i32> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                return Err(
                    anyhow::Error::from(e).context(format!("wait for sandbox process {pid}"))
                )
            }
        }
    }
}

/// Reaps `pid` after a failure; a description of how it ended.
fn child_reap(pid: i32) -> String {
    match wait(pid) {
        Ok(code) => format!("exit status {code}"),
        Err(e) => format!("{e:#}"),
    }
}

/// One text message, or `None` on EOF.
fn recv_line(sock: &OwnedFd) -> anyhow::Result<Option<String>> {
    let mut buf = vec![0u8; 65536];
    let (n, _) = fdpass::recv(sock, &mut buf).context("read from the sandbox init")?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned()))
}

/// Entry point of `tapnet __sandbox-init`.
pub(super) fn main() -> ExitCode {
    let sock = match fdpass::take_inherited(CONTROL_FD) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tapnet __sandbox-init: control socket (fd {CONTROL_FD}): {e}");
            return ExitCode::from(125);
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    let spec: InitSpec = match fdpass::recv(&sock, &mut buf)
        .map_err(anyhow::Error::from)
        .and_then(|(n, _)| serde_json::from_slice(&buf[..n]).map_err(anyhow::Error::from))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tapnet __sandbox-init: read spec: {e:#}");
            return ExitCode::from(125);
        }
    };
    if let Err(e) = setup(&spec) {
        let _ = fdpass::send(&sock, format!("err: {e:#}").as_bytes(), &[]);
        return ExitCode::from(125);
    }
    if fdpass::send(&sock, b"ok", &[]).is_err() {
        return ExitCode::from(125);
    }
    match fdpass::recv(&sock, &mut buf) {
        Ok((n, _)) if &buf[..n] == b"go" => {}
        // The parent gave up.
        _ => return ExitCode::from(125),
    }
    let err = command(&spec.cmd, &spec.env).exec();
    let code = exec_failure_code(&err);
    let _ = fdpass::send(
        &sock,
        format!("err: exec {}: {err}", spec.cmd[0]).as_bytes(),
        &[],
    );
    ExitCode::from(code)
}

/// 127 when the command was not found, 126 otherwise (like a shell).
fn exec_failure_code(err: &std::io::Error) -> u8 {
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// CMD with exactly `env` (plus a default PATH).
fn command(cmd: &[String], env: &[(String, String)]) -> Command {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]).env_clear();
    c.envs(
        env.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    if !env.iter().any(|(k, _)| k == "PATH") {
        c.env("PATH", DEFAULT_PATH);
    }
    c
}

/// Namespaces, mounts, hostname, `lo`; in the init process.
fn setup(spec: &InitSpec) -> anyhow::Result<()> {
    if spec.cmd.is_empty() {
        anyhow::bail!("no command to run");
    }
    if spec.setsid {
        nix::unistd::setsid().context("setsid")?;
    }
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    let rootless = !uid.is_root();
    match spec.join_net {
        None => {
            if rootless {
                ns::unshare(CloneFlags::CLONE_NEWUSER).context("create user namespace")?;
                ns::map_root("self", uid.as_raw(), gid.as_raw()).context("map uid/gid to root")?;
            }
            ns::unshare(
                CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS,
            )
            .context("create namespaces")?;
        }
        Some(pid) => {
            let net = ns::open_of(pid, "net")
                .with_context(|| format!("join network of process {pid}"))?;
            let user = ns::open_of(pid, "user")
                .with_context(|| format!("join network of process {pid}"))?;
            let own_user = ns::open_self("user")?;
            let own_net = ns::open_self("net")?;
            if ns::same(&user, &own_user)? {
                if !ns::same(&net, &own_net)? {
                    ns::setns(&net, CloneFlags::CLONE_NEWNET, "net")
                        .with_context(|| format!("join network of process {pid}"))?;
                }
                if rootless {
                    ns::unshare(CloneFlags::CLONE_NEWUSER).context("create user namespace")?;
                    ns::map_root("self", uid.as_raw(), gid.as_raw())
                        .context("map uid/gid to root")?;
                }
            } else {
                ns::setns(&user, CloneFlags::CLONE_NEWUSER, "user")
                    .with_context(|| format!("join user namespace of process {pid}"))?;
                ns::become_root().context("join user namespace")?;
                ns::setns(&net, CloneFlags::CLONE_NEWNET, "net")
                    .with_context(|| format!("join network of process {pid}"))?;
            }
            ns::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
                .context("create namespaces")?;
        }
    }
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / rprivate")?;
    // A sysfs of the sandbox's own network namespace (read-only, as Docker
    // mounts it), so /sys/class/net shows the sandbox's interfaces, not the
    // host's. The kernel allows it when the sandbox's user namespace owns
    // the network namespace; when joining another one it may refuse, and
    // the inherited /sys stays (best effort).
    let sysfs = nix::mount::mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    if let (Err(e), None) = (sysfs, spec.join_net) {
        return Err(anyhow::anyhow!("mount sysfs on /sys: {e}"));
    }
    for (src, dst) in &spec.files {
        bind_file(src, dst)?;
    }
    // After the bind mounts above, whose sources may lie below a hidden
    // directory: they stay reachable where they were mounted.
    for p in &spec.hide {
        hide(p)?;
    }
    if !spec.hostname.is_empty() {
        nix::unistd::sethostname(&spec.hostname)
            .with_context(|| format!("set hostname {}", spec.hostname))?;
    }
    if spec.join_net.is_none() {
        let mut nl = Netlink::open().context("bring lo up")?;
        let lo = nl.index("lo").context("bring lo up")?;
        nl.set_link(lo, None, None, Some(true))
            .context("bring lo up")?;
    }
    Ok(())
}

/// Covers `p` in the sandbox's mount namespace: a directory with an empty
/// read-only tmpfs, anything else with `/dev/null`. A path that does not
/// exist needs no cover.
fn hide(p: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("hide {}", p.display())),
    };
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if meta.is_dir() {
        nix::mount::mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            flags,
            Some("size=4k,mode=0755"),
        )
        .with_context(|| format!("hide {} (mount an empty tmpfs over it)", p.display()))
    } else {
        nix::mount::mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("hide {} (bind-mount /dev/null over it)", p.display()))
    }
}

fn bind_file(src: &Path, dst: &Path) -> anyhow::Result<()> {
    nix::mount::mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind-mount {} over {}", src.display(), dst.display()))
}

/// `exec_in`: CMD in the namespaces of `pid`, stdio inherited.
pub(super) fn exec_in(pid: i32, cmd: &[String], env: &[(String, String)]) -> anyhow::Result<i32> {
    if cmd.is_empty() {
        anyhow::bail!("no command to run");
    }
    let ctx = || format!("enter the namespaces of process {pid}");
    let user = ns::open_of(pid, "user").with_context(ctx)?;
    let own_user = ns::open_self("user").with_context(ctx)?;
    let mut nss = Vec::new();
    let join_user = !ns::same(&user, &own_user).with_context(ctx)?;
    if join_user {
        nss.push((user, CloneFlags::CLONE_NEWUSER));
    }
    for (kind, flag) in [
        ("mnt", CloneFlags::CLONE_NEWNS),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
    ] {
        nss.push((ns::open_of(pid, kind).with_context(ctx)?, flag));
    }
    let mut command = command(cmd, env);
    process::join_namespaces(&mut command, nss, join_user);
    let status = command
        .status()
        .with_context(|| format!("exec {} in process {pid}", cmd[0]))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(125))
}
