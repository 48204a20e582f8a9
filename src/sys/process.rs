//! Hooks run in a forked child between `fork` and `exec`
//! ([`std::os::unix::process::CommandExt::pre_exec`]). The child is
//! single-threaded there, which `setns` into a user namespace requires.
//! The hooks only make async-signal-safe system calls and do not allocate.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sched::CloneFlags;

/// Makes `fd` appear as `target` (e.g. 3) in the child, without
/// close-on-exec. `fd` stays open in `cmd` until `cmd` is dropped.
pub fn place_fd(cmd: &mut Command, fd: OwnedFd, target: RawFd) {
    let hook = move || -> std::io::Result<()> {
        let src = fd.as_raw_fd();
        if src == target {
            // SAFETY: F_SETFD on an fd the child has open; no memory involved.
            if unsafe { libc::fcntl(src, libc::F_SETFD, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        // SAFETY: dup2 between two fd numbers; it touches no memory and is
        // async-signal-safe. It replaces whatever `target` was in the child
        // only, and the new fd has no close-on-exec flag.
        } else if unsafe { libc::dup2(src, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls dup2/fcntl (async-signal-safe) and does
    // not allocate or take locks, as required after fork.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Makes the child join the namespaces `nss` in order (the user namespace
/// first, if any) and, with `become_root`, switch to uid/gid 0 of the
/// joined user namespace before `exec`.
pub fn join_namespaces(cmd: &mut Command, nss: Vec<(OwnedFd, CloneFlags)>, become_root: bool) {
    let hook = move || -> std::io::Result<()> {
        for (fd, flags) in &nss {
            // SAFETY: setns on a namespace fd we own; no memory involved.
            if unsafe { libc::setns(fd.as_raw_fd(), flags.bits()) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if become_root {
            // Denied in user namespaces made by unprivileged users: ignore.
            // SAFETY: a zero-length group list; the pointer is not read.
            let _ = unsafe { libc::setgroups(0, std::ptr::null()) };
            // SAFETY: a plain id-setting system call; no memory involved.
            if unsafe { libc::setresgid(0, 0, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a plain id-setting system call; no memory involved.
            if unsafe { libc::setresuid(0, 0, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only calls setns/setgroups/setresgid/setresuid
    // (async-signal-safe system calls) on data moved into it; it does not
    // allocate or take locks, as required after fork.
    unsafe {
        cmd.pre_exec(hook);
    }
}
