//! Namespaces: `unshare`, `setns`, uid/gid maps, the owning user namespace
//! of a namespace (`NS_GET_USERNS`) and namespace identity.
//!
//! `setns` into a user namespace and `unshare(CLONE_NEWUSER)` need a
//! single-threaded process: call them from a fresh helper process or from a
//! forked child (see [`crate::sys::process`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub use nix::sched::CloneFlags;

/// Errors of namespace operations; the message names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// unshare() failed.
    #[error("unshare({flags:?}): {source}")]
    Unshare {
        flags: CloneFlags,
        #[source]
        source: io::Error,
    },
    /// setns() failed.
    #[error("setns {what}: {source}")]
    Setns {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Opening a namespace file failed.
    #[error("open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Writing /proc/PID/{uid_map,gid_map,setgroups} failed.
    #[error("write {path}: {source}")]
    WriteMap {
        path: String,
        #[source]
        source: io::Error,
    },
    /// NS_GET_USERNS failed.
    #[error("NS_GET_USERNS: {0}")]
    GetUserns(#[source] io::Error),
    /// fstat on a namespace fd failed.
    #[error("stat namespace: {0}")]
    Stat(#[source] io::Error),
    /// Switching to uid/gid 0 inside a joined user namespace failed.
    #[error("become root in the user namespace: {0}")]
    BecomeRoot(#[source] io::Error),
}

impl NsError {
    /// The OS error behind this failure.
    pub fn io_error(&self) -> &io::Error {
        match self {
            NsError::Unshare { source, .. }
            | NsError::Setns { source, .. }
            | NsError::Open { source, .. }
            | NsError::WriteMap { source, .. } => source,
            NsError::GetUserns(e) | NsError::Stat(e) | NsError::BecomeRoot(e) => e,
        }
    }
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// `unshare(flags)` for the calling thread/process.
pub fn unshare(flags: CloneFlags) -> Result<(), NsError> {
    nix::sched::unshare(flags).map_err(|e| NsError::Unshare {
        flags,
        source: errno(e),
    })
}

/// `setns(fd, nstype)`; `what` names the namespace in the error.
pub fn setns(fd: impl AsFd, nstype: CloneFlags, what: &str) -> Result<(), NsError> {
    nix::sched::setns(fd, nstype).map_err(|e| NsError::Setns {
        what: what.to_string(),
        source: errno(e),
    })
}

/// Opens a namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`, ...).
pub fn open(path: impl AsRef<Path>) -> Result<OwnedFd, NsError> {
    let path = path.as_ref();
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| NsError::Open {
            path: path.display().to_string(),
            source,
        })
}

/// Opens a namespace of process `pid` (`kind`: `net`, `user`, `mnt`, `uts`...).
pub fn open_of(pid: i32, kind: &str) -> Result<OwnedFd, NsError> {
    open(format!("/proc/{pid}/ns/{kind}"))
}

/// Runs `f` on a new thread that first joins the network namespace of
/// process `pid`, so that the sockets `f` makes belong to that namespace;
/// the caller's threads stay where they are. Needs the right to enter it
/// (root, or the namespace's owner).
pub fn with_netns_of<R: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, NsError> {
    let net = open_of(pid, "net")?;
    std::thread::spawn(move || {
        setns(&net, CloneFlags::CLONE_NEWNET, "net")?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Whether process `pid` is in the caller's network namespace.
pub fn same_netns_as(pid: i32) -> Result<bool, NsError> {
    same(&open_of(pid, "net")?, &open_self("net")?)
}

/// Opens a namespace of the calling thread.
pub fn open_self(kind: &str) -> Result<OwnedFd, NsError> {
    open(format!("/proc/thread-self/ns/{kind}"))
}

/// The user namespace that owns the namespace `ns` (`NS_GET_USERNS`).
/// Fails with EPERM when that user namespace is outside the caller's
/// (an ancestor of it).
pub fn owning_userns(ns: &impl AsFd) -> Result<OwnedFd, NsError> {
    super::ioctl_new_fd(ns, libc::NS_GET_USERNS).map_err(NsError::GetUserns)
}

/// Whether two namespace fds refer to the same namespace (same st_dev and
/// st_ino of the nsfs inode).
pub fn same(a: &impl AsFd, b: &impl AsFd) -> Result<bool, NsError> {
    let id = |fd: &dyn AsFd| -> Result<(u64, u64), NsError> {
        let file = File::from(fd.as_fd().try_clone_to_owned().map_err(NsError::Stat)?);
        let meta = file.metadata().map_err(NsError::Stat)?;
        Ok((meta.dev(), meta.ino()))
    };
    Ok(id(a)? == id(b)?)
}

/// Maps `uid`/`gid` (ids of the parent namespace) to 0 in the user
/// namespace of process `pid` (`"self"` for the caller): writes `deny` to
/// `setgroups`, then `0 ID 1` to `uid_map` and `gid_map`. An unprivileged
/// process may do this for itself right after `unshare(CLONE_NEWUSER)`.
pub fn map_root(pid: &str, uid: u32, gid: u32) -> Result<(), NsError> {
    let write = |file: &str, data: String| -> Result<(), NsError> {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, data).map_err(|source| NsError::WriteMap { path, source })
    };
    match write("setgroups", "deny".into()) {
        // Kernels before 3.19 have no setgroups file.
        Err(NsError::WriteMap { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => other?,
    }
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("gid_map", format!("0 {gid} 1\n"))
}

/// After joining a user namespace: become uid/gid 0 there (like
/// `nsenter --user`), dropping supplementary groups where allowed.
pub fn become_root() -> Result<(), NsError> {
    use nix::unistd::{Gid, Uid};
    // setgroups is denied in namespaces made by unprivileged users: ignore.
    let _ = nix::unistd::setgroups(&[]);
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(|e| NsError::BecomeRoot(errno(e)))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|e| NsError::BecomeRoot(errno(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_namespace_by_inode() {
        let a = open_self("net").expect("open own netns");
        let b = open("/proc/self/ns/net").expect("open own netns again");
        assert!(same(&a, &b).expect("compare"));
        let u = open_self("user").expect("open own userns");
        // A netns and a userns are different inodes.
        assert!(!same(&a, &u).expect("compare"));
    }

    #[test]
    fn owner_of_own_netns_is_own_userns_or_ancestor() {
        let net = open_self("net").expect("open own netns");
        match owning_userns(&net) {
            Ok(owner) => {
                let own = open_self("user").expect("open own userns");
                assert!(same(&owner, &own).expect("compare"));
            }
            // Our netns belongs to an ancestor of our user namespace.
            Err(e) => assert_eq!(e.io_error().raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }

    #[test]
    fn open_missing_names_the_path() {
        let err = open("/proc/0/ns/net").unwrap_err();
        assert!(
            err.to_string().starts_with("open /proc/0/ns/net: "),
            "{err}"
        );
    }
}
