//! Device and namespace plumbing: the only module of the root package with
//! `unsafe` code (ioctls on `/dev/net/tun`, `setns`/`unshare`, SCM_RIGHTS).
//! Every unsafe block carries a `// SAFETY:` comment.

use std::os::fd::{BorrowedFd, RawFd};

/// Borrows a raw fd for a short call. Callers must only pass fds they own
/// and keep open for the duration of the borrow (e.g. from an `OwnedFd`
/// they hold).
pub fn borrow_fd(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the contract above: callers pass an fd they keep open while
    // the borrow is used.
    unsafe { BorrowedFd::borrow_raw(fd) }
}
