//! File descriptors over Unix sockets (SCM_RIGHTS).
//!
//! Meant for `SOCK_SEQPACKET` socket pairs: each [`send`] is one message
//! (bytes plus at most [`MAX_FDS`] fds) and each [`recv`] returns one
//! message. Received fds are close-on-exec and owned at once.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

/// Most fds carried by one message (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 250;

/// Errors of fd passing; the message names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum FdPassError {
    /// More fds than one message can carry.
    #[error("{0} fds in one message (at most {MAX_FDS})")]
    TooManyFds(usize),
    /// sendmsg() failed.
    #[error("sendmsg: {0}")]
    Send(#[source] io::Error),
    /// recvmsg() failed.
    #[error("recvmsg: {0}")]
    Recv(#[source] io::Error),
    /// The message or its fds did not fit the buffers.
    #[error("recvmsg: message truncated")]
    Truncated,
    /// Nothing arrived within the receive timeout.
    #[error("recvmsg: timed out")]
    TimedOut,
    /// setsockopt(SO_RCVTIMEO) failed.
    #[error("set receive timeout: {0}")]
    SetTimeout(#[source] io::Error),
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Sends `data` and `fds` as one message on `sock`.
pub fn send(sock: &impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), FdPassError> {
    if fds.len() > MAX_FDS {
        return Err(FdPassError::TooManyFds(fds.len()));
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    let iov = [IoSlice::new(data)];
    loop {
        match socket::sendmsg::<UnixAddr>(
            sock.as_fd().as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(FdPassError::Send(errno(e))),
        }
    }
}

/// Receives one message into `buf`; returns its length and its fds. A
/// length of 0 with no fds means the peer closed the socket.
pub fn recv(sock: &impl AsFd, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), FdPassError> {
    let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match socket::recvmsg::<UnixAddr>(
            sock.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EAGAIN) => return Err(FdPassError::TimedOut),
            Err(e) => return Err(FdPassError::Recv(errno(e))),
        }
    };
    let mut fds = Vec::new();
    let cmsgs = msg.cmsgs().map_err(|_| FdPassError::Truncated)?;
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed this fd in our table for
                // this message; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(FdPassError::Truncated);
    }
    Ok((msg.bytes, fds))
}

/// Makes [`recv`] on `sock` fail with [`FdPassError::TimedOut`] after
/// `timeout` without a message.
pub fn set_recv_timeout(sock: &impl AsFd, timeout: std::time::Duration) -> Result<(), FdPassError> {
    let tv = nix::sys::time::TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    socket::setsockopt(sock, socket::sockopt::ReceiveTimeout, &tv)
        .map_err(|e| FdPassError::SetTimeout(errno(e)))
}

/// Takes ownership of an fd inherited at a fixed number (e.g. 3, placed
/// there by [`crate::sys::process::place_fd`]) and marks it close-on-exec.
/// Fails with EBADF if no such fd is open.
pub fn take_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the fd table; no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is open (checked above) and, by the calling
    // convention with our parent, was handed to this process to own; it is
    // taken exactly once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD on an fd we own; no memory is involved.
    if unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// A connected `SOCK_SEQPACKET` Unix socket pair, close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn passes_fds_and_bytes() {
        let (a, b) = seqpacket_pair().expect("socketpair");
        let mut file = crate::sys::unlinked_temp_file("fdpass");
        file.write_all(b"hello").expect("write");
        send(&a, b"msg", &[file.as_fd(), file.as_fd()]).expect("send");
        let mut buf = [0u8; 16];
        let (n, fds) = recv(&b, &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"msg");
        assert_eq!(fds.len(), 2);
        let mut got = std::fs::File::from(fds.into_iter().next().expect("one fd"));
        got.rewind().expect("seek");
        let mut s = String::new();
        got.read_to_string(&mut s).expect("read");
        assert_eq!(s, "hello");
        drop(a);
        let (n, fds) = recv(&b, &mut buf).expect("recv eof");
        assert_eq!((n, fds.len()), (0, 0));
    }

    #[test]
    fn recv_times_out() {
        let (_a, b) = seqpacket_pair().expect("socketpair");
        set_recv_timeout(&b, std::time::Duration::from_millis(20)).expect("timeout");
        let mut buf = [0u8; 4];
        assert!(matches!(recv(&b, &mut buf), Err(FdPassError::TimedOut)));
    }

    #[test]
    fn too_many_fds_is_refused() {
        let (a, _b) = seqpacket_pair().expect("socketpair");
        let fds = vec![a.as_fd(); MAX_FDS + 1];
        assert!(matches!(
            send(&a, b"x", &fds),
            Err(FdPassError::TooManyFds(_))
        ));
    }

    #[test]
    fn truncated_message_is_an_error() {
        let (a, b) = seqpacket_pair().expect("socketpair");
        send(&a, b"0123456789", &[]).expect("send");
        let mut buf = [0u8; 4];
        assert!(matches!(recv(&b, &mut buf), Err(FdPassError::Truncated)));
    }
}
