//! Running under systemd (`contrib/systemd/`): the daemon's log lines on
//! stderr in the form journald reads, and readiness notification
//! (`Type=notify`). Outside systemd both are no-ops and the log keeps its
//! usual terminal form.
//!
//! - Logging: to stderr, filtered by `TAPNET_LOG` (default `info`). When
//!   stderr *is* the journal (`JOURNAL_STREAM` names the device and inode of
//!   our stderr, as systemd sets it for a service whose output goes to the
//!   journal; a child that inherited the variable but not the stream does
//!   not match), each line is `<PRIORITY>LEVEL message fields`: no
//!   timestamp and no ANSI colour (journald adds its own), the syslog
//!   priority prefix so that `journalctl -p warning` filters, and the level
//!   word kept, e.g. `INFO listening on unix:///run/tapnet/tapnet.sock`.
//! - Notification: `notify("READY=1")` once the API socket listens, so
//!   that `systemctl start tapnet` returns, and units ordered after it
//!   (`docker.service`) start, only once clients can connect.

use std::fmt;
use std::os::unix::ffi::OsStrExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the daemon's log subscriber (once; later calls do nothing).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPNET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = if stderr_is_journal() {
        builder
            .with_ansi(false)
            .event_format(JournalFormat)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`) names our stderr.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    journal_stream_matches(&v.to_string_lossy(), st.st_dev, st.st_ino)
}

/// Parses `JOURNAL_STREAM`'s `DEVICE:INODE` and compares.
fn journal_stream_matches(v: &str, dev: u64, ino: u64) -> bool {
    match v.split_once(':') {
        Some((d, i)) => d.parse() == Ok(dev) && i.parse() == Ok(ino),
        None => false,
    }
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// One journald line per event: `<PRIORITY>LEVEL message fields`.
struct JournalFormat;

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        write!(w, "<{}>{level} ", priority(level))?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Sends `state` (e.g. `READY=1`, `STOPPING=1`) to the service manager
/// when `NOTIFY_SOCKET` is set; errors are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(path.as_bytes(), state.as_bytes()) {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}

fn send(path: &[u8], msg: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let sock = UnixDatagram::unbound()?;
    // `@NAME` is a socket in the abstract namespace.
    let addr = match path.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))?,
    };
    sock.send_to_addr(msg, &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("", 8, 12345));
        assert!(!journal_stream_matches("8", 8, 12345));
    }

    #[test]
    fn notify_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("tapnet-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        send(p.as_os_str().as_bytes(), b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notify_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let name = format!("tapnet-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send(format!("@{name}").as_bytes(), b"STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
