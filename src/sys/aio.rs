//! Many small writes in one system call: Linux's native AIO (`io_setup`,
//! `io_submit`, `io_getevents`) used for one thing, a worker's frames to
//! TAP queues.
//!
//! Why: every write to a TAP can wake the process that receives the frame,
//! and the scheduler (which pulls a woken task onto the waker's CPU) then
//! preempts the writer when its system call returns: one context switch
//! per frame. Frames written in one `io_submit` wake the receiver once, and
//! it finds them all. A TAP's write has no asynchronous path, so
//! `io_submit` runs each write to completion, in order, before it returns.
//!
//! [`WriteBatch::submit`] nevertheless waits for every completion before it
//! returns, whatever the descriptor, so the kernel never reads a slot after
//! it was refilled or freed.

use std::io;
use std::os::fd::RawFd;

/// `IOCB_CMD_PWRITE`.
const IOCB_CMD_PWRITE: u16 = 1;

/// `struct iocb` (`linux/aio_abi.h`). `aio_key` and `aio_rw_flags` swap
/// places on big-endian machines; both are zero here.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Iocb {
    aio_data: u64,
    aio_key: u32,
    aio_rw_flags: i32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// `struct aio_ring` (`fs/aio.c`): the header of the completion ring the
/// kernel maps at a context's address; `nr` events follow it.
#[repr(C)]
struct AioRing {
    id: u32,
    nr: u32,
    head: u32,
    tail: u32,
    magic: u32,
    compat_features: u32,
    incompat_features: u32,
    header_length: u32,
}

const AIO_RING_MAGIC: u32 = 0xa10a_10a1;

/// Reports a completion to `done`: its tag, and the bytes written or the
/// error.
fn report(ev: &IoEvent, done: &mut impl FnMut(u32, io::Result<usize>)) {
    let r = if ev.res < 0 {
        Err(io::Error::from_raw_os_error(-ev.res as i32))
    } else {
        Ok(ev.res as usize)
    };
    done(ev.data as u32, r);
}

/// Up to `cap` writes of at most `slot` bytes each, copied in, written by
/// one [`WriteBatch::submit`].
///
/// Invariants: `iocbs[..n]` describe the queued writes, each pointing into
/// its own `slot`-byte range of `buf`; nothing is in flight outside
/// `submit`.
pub struct WriteBatch {
    ctx: libc::c_ulong,
    slot: usize,
    buf: Box<[u8]>,
    iocbs: Box<[Iocb]>,
    ptrs: Box<[*mut Iocb]>,
    events: Box<[IoEvent]>,
    n: usize,
}

impl WriteBatch {
    /// A batch of `cap` (>= 1) writes of up to `slot` bytes each. Fails
    /// where AIO is unavailable: a kernel without it, a seccomp filter
    /// that refuses it, or `fs.aio-max-nr` reached.
    pub fn new(cap: usize, slot: usize) -> io::Result<WriteBatch> {
        let cap = cap.max(1);
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the new context's id to `ctx`, a live
        // c_ulong that starts at zero as the call requires.
        let ret = unsafe { libc::syscall(libc::SYS_io_setup, cap as libc::c_long, &mut ctx) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(WriteBatch {
            ctx,
            slot,
            buf: vec![0u8; cap * slot].into_boxed_slice(),
            iocbs: vec![Iocb::default(); cap].into_boxed_slice(),
            ptrs: vec![std::ptr::null_mut(); cap].into_boxed_slice(),
            events: vec![IoEvent::default(); cap].into_boxed_slice(),
            n: 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn is_full(&self) -> bool {
        self.n == self.iocbs.len()
    }

    /// Queues one write of `parts`, concatenated, to `fd`, with the
    /// caller's `tag`. Returns false (and queues nothing) when the batch is
    /// full or the parts exceed a slot. `fd` must stay open until the next
    /// [`WriteBatch::submit`].
    pub fn push(&mut self, fd: RawFd, tag: u32, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.is_full() || len > self.slot {
            return false;
        }
        let i = self.n;
        let dst = &mut self.buf[i * self.slot..i * self.slot + len];
        let mut at = 0;
        for p in parts {
            dst[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.iocbs[i] = Iocb {
            // The caller's tag: the kernel hands it back with the
            // completion.
            aio_data: u64::from(tag),
            aio_lio_opcode: IOCB_CMD_PWRITE,
            aio_fildes: fd as u32,
            aio_buf: dst.as_ptr() as u64,
            aio_nbytes: len as u64,
            ..Iocb::default()
        };
        self.n += 1;
        true
    }

    /// Writes everything queued, in order, and reports each write's result
    /// with its tag to `done` (bytes written, or the error). The batch is
    /// empty afterwards.
    pub fn submit(&mut self, mut done: impl FnMut(u32, io::Result<usize>)) {
        if self.n == 1 {
            // One write: write(2) is one system call, io_submit and
            // io_getevents two.
            let cb = self.iocbs[0];
            // SAFETY: the iocb describes `aio_nbytes` initialised bytes of
            // our own `buf`, alive for the call.
            let ret = unsafe {
                libc::write(
                    cb.aio_fildes as RawFd,
                    cb.aio_buf as *const libc::c_void,
                    cb.aio_nbytes as usize,
                )
            };
            let r = if ret < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(ret as usize)
            };
            done(cb.aio_data as u32, r);
            self.n = 0;
            return;
        }
        let mut next = 0;
        while next < self.n {
            for (p, cb) in self.ptrs[next..self.n]
                .iter_mut()
                .zip(&mut self.iocbs[next..self.n])
            {
                *p = cb;
            }
            let want = self.n - next;
            // SAFETY: `ptrs[next..n]` point to initialised iocbs, each
            // describing a buffer inside `buf` that stays untouched until
            // the completions are reaped below; the context is ours.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_io_submit,
                    self.ctx,
                    want as libc::c_long,
                    self.ptrs[next..].as_mut_ptr(),
                )
            };
            if ret == 0 {
                // Nothing taken and no error (not for a non-empty list):
                // report the rest rather than try forever.
                for cb in &self.iocbs[next..self.n] {
                    done(
                        cb.aio_data as u32,
                        Err(io::Error::from_raw_os_error(libc::EAGAIN)),
                    );
                }
                break;
            }
            let submitted = if ret < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // The first iocb was refused (a bad descriptor, say):
                // report it and go on with the rest.
                done(self.iocbs[next].aio_data as u32, Err(e));
                next += 1;
                0
            } else {
                ret as usize
            };
            if submitted > 0 {
                self.reap(submitted, &mut done);
                next += submitted;
            }
        }
        self.n = 0;
    }

    /// Reports the completions already in the context's ring, which the
    /// kernel maps into our memory at the context's address (as libaio
    /// reads it): no system call. Returns how many it reported.
    fn reap_ring(&mut self, max: usize, done: &mut impl FnMut(u32, io::Result<usize>)) -> usize {
        let ring = self.ctx as *mut AioRing;
        // SAFETY: io_setup mapped an `aio_ring` header at `ctx`, readable
        // and writable by us, for the context's life; the magic number and
        // header length check that it has the layout we read.
        let (nr, head, tail) = unsafe {
            let r = &*ring;
            if r.magic != AIO_RING_MAGIC
                || r.incompat_features != 0
                || r.header_length as usize != std::mem::size_of::<AioRing>()
            {
                return 0;
            }
            // Acquire: the events the tail covers are written before it.
            let tail = std::ptr::addr_of!(r.tail).read_volatile();
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            (r.nr, std::ptr::addr_of!(r.head).read_volatile(), tail)
        };
        if nr == 0 || head >= nr || tail >= nr {
            return 0;
        }
        let mut at = head;
        let mut got = 0;
        while at != tail && got < max {
            // SAFETY: the ring's `nr` events follow its header; `at` < nr.
            let ev = unsafe {
                ring.add(1)
                    .cast::<IoEvent>()
                    .add(at as usize)
                    .read_volatile()
            };
            report(&ev, done);
            at = (at + 1) % nr;
            got += 1;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        // SAFETY: as above; the kernel reads `head` under its own lock to
        // know which events we consumed.
        unsafe { std::ptr::addr_of_mut!((*ring).head).write_volatile(at) };
        got
    }

    /// Waits for `count` completions and reports them.
    fn reap(&mut self, count: usize, done: &mut impl FnMut(u32, io::Result<usize>)) {
        let mut left = count - self.reap_ring(count, done);
        while left > 0 {
            // SAFETY: `events` has room for `left` (<= its length) events;
            // a null timeout waits until `left` have completed.
            let got = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.ctx,
                    left as libc::c_long,
                    left as libc::c_long,
                    self.events.as_mut_ptr(),
                    std::ptr::null_mut::<libc::timespec>(),
                )
            };
            if got < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // Only a bad context fails here, which ours is not: stop
                // rather than spin (the writes' own outcome is unknown).
                break;
            }
            for ev in &self.events[..got as usize] {
                report(ev, done);
            }
            left -= got as usize;
        }
    }
}

impl Drop for WriteBatch {
    fn drop(&mut self) {
        // SAFETY: destroys our own context; nothing is in flight outside
        // `submit`, which reaps all it submits.
        unsafe {
            libc::syscall(libc::SYS_io_destroy, self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn writes_in_order_and_reports_each() {
        let (mut r, w) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let mut b = WriteBatch::new(4, 8).expect("io_setup");
        assert!(b.is_empty());
        assert!(b.push(w.as_raw_fd(), 10, &[b"ab", b"cd"]));
        assert!(!b.push(w.as_raw_fd(), 11, &[b"too long for a slot"]));
        assert!(b.push(-1, 12, &[b"x"]));
        assert!(b.push(w.as_raw_fd(), 13, &[b"efg"]));
        assert!(b.push(w.as_raw_fd(), 14, &[b"h"]));
        assert!(b.is_full());
        assert!(!b.push(w.as_raw_fd(), 15, &[b"i"]));
        let mut seen = vec![];
        b.submit(|tag, r| seen.push((tag, r.map_err(|e| e.raw_os_error()))));
        assert_eq!(
            seen,
            [
                (10, Ok(4)),
                (12, Err(Some(libc::EBADF))),
                (13, Ok(3)),
                (14, Ok(1))
            ]
        );
        assert!(b.is_empty());
        let mut got = [0u8; 8];
        r.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"abcdefgh");
        // Reusable after a submit; a single write goes out alone.
        assert!(b.push(w.as_raw_fd(), 1, &[b"z"]));
        b.submit(|tag, r| assert_eq!((tag, r.unwrap()), (1, 1)));
        assert!(b.push(-1, 2, &[b"z"]));
        b.submit(|tag, r| assert_eq!((tag, r.unwrap_err().raw_os_error()), (2, Some(libc::EBADF))));
        let mut z = [0u8; 1];
        r.read_exact(&mut z).expect("read");
        assert_eq!(&z, b"z");
    }
}
