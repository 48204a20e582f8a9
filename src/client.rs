//! A small synchronous HTTP/1.1 client over a Unix socket, for the CLI (no
//! async runtime in the CLI: it forks sandboxes). One request per
//! connection (`Connection: close`); responses with `Content-Length`,
//! chunked encoding or read-to-EOF bodies.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Errors of a request; `Display` is the one line the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // The io error is part of the one line, not a `source()`: anyhow's
    // `{:#}` would print it twice.
    #[error(
        "cannot connect to the tapnet daemon at unix://{path}: {err} (is `tapnet daemon` running?)"
    )]
    Connect { path: String, err: std::io::Error },
    #[error("talking to the tapnet daemon at unix://{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("malformed response from the tapnet daemon: {0}")]
    Protocol(String),
    #[error("Error response from daemon: {message}")]
    Api { status: u16, message: String },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The default daemon socket: `/run/tapnet/tapnet.sock` as root, else
/// `$XDG_RUNTIME_DIR/tapnet/tapnet.sock` (fallback `/run/user/UID/...`).
pub fn default_socket() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/tapnet/tapnet.sock");
    }
    user_runtime_dir().join("tapnet/tapnet.sock")
}

/// An ordinary user's runtime directory: `$XDG_RUNTIME_DIR`, else
/// `/run/user/UID`.
pub fn user_runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", nix::unistd::geteuid())))
}

/// Parses `-H`: `unix:///PATH` (or a plain absolute path). Other schemes
/// are refused: tapnet listens on nothing but a Unix socket.
pub fn parse_host(host: Option<&str>) -> Result<PathBuf, String> {
    match host.filter(|h| !h.is_empty()) {
        None => Ok(default_socket()),
        Some(h) => {
            if let Some(p) = h.strip_prefix("unix://") {
                if p.is_empty() {
                    return Err(format!("invalid host {h:?}: no socket path"));
                }
                Ok(PathBuf::from(p))
            } else if h.starts_with('/') {
                Ok(PathBuf::from(h))
            } else {
                Err(format!(
                    "invalid host {h:?}: only unix:///PATH sockets are supported"
                ))
            }
        }
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A raw response.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A connection to the daemon's socket, and how I/O errors on it read.
    fn connect(&self) -> Result<(UnixStream, impl Fn(std::io::Error) -> ClientError), ClientError> {
        let path = self.socket.display().to_string();
        let s = UnixStream::connect(&self.socket).map_err(|err| ClientError::Connect {
            path: path.clone(),
            err,
        })?;
        Ok((s, move |err| ClientError::Io {
            path: path.clone(),
            err,
        }))
    }

    /// Sends one request; non-2xx statuses become [`ClientError::Api`].
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let (mut s, io) = self.connect()?;
        // Container stop waits up to its timeout; be generous.
        s.set_read_timeout(Some(Duration::from_secs(300))).ok();
        let mut req = request_head(method, path);
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        } else if method == "POST" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        let mut buf = req.into_bytes();
        if let Some(b) = body {
            buf.extend_from_slice(b);
        }
        s.write_all(&buf).map_err(&io)?;
        let mut raw = vec![];
        s.read_to_end(&mut raw).map_err(&io)?;
        let resp = parse_response(&raw).map_err(ClientError::Protocol)?;
        if !(200..300).contains(&resp.status) {
            let message = serde_json::from_slice::<crate::daemon::types::ErrorBody>(&resp.body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&resp.body).trim().to_string());
            return Err(ClientError::Api {
                status: resp.status,
                message,
            });
        }
        Ok(resp)
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let r = self.request("GET", path, None)?;
        decode(&r.body)
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let b = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let r = self.request("POST", path, Some(&b))?;
        decode(&r.body)
    }

    /// POST whose response body is ignored.
    pub fn post_ok(&self, path: &str, body: Option<&impl Serialize>) -> Result<(), ClientError> {
        let b = match body {
            Some(b) => {
                Some(serde_json::to_vec(b).map_err(|e| ClientError::Protocol(e.to_string()))?)
            }
            None => None,
        };
        self.request("POST", path, b.as_deref())?;
        Ok(())
    }

    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.request("DELETE", path, None)?;
        Ok(())
    }
}

/// A response whose body is read as it arrives.
pub struct Streamed {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn Read + Send>,
}

impl Streamed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Client {
    /// Sends a bodiless request and returns the response as soon as its
    /// headers are in; the body (chunked or not) is read from
    /// [`Streamed::body`] as the daemon sends it. Non-2xx statuses become
    /// [`ClientError::Api`].
    pub fn stream(&self, method: &str, path: &str) -> Result<Streamed, ClientError> {
        use std::io::BufRead;
        let (mut s, io) = self.connect()?;
        let req = request_head(method, path) + "\r\n";
        s.write_all(req.as_bytes()).map_err(&io)?;
        let mut r = std::io::BufReader::with_capacity(1 << 16, s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(&io)? == 0 {
                return Err(ClientError::Protocol("no end of headers".into()));
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        let mut body: Box<dyn Read + Send> = if chunked {
            Box::new(Chunked {
                inner: r,
                left: 0,
                done: false,
            })
        } else if let Some(n) = length {
            Box::new(r.take(n))
        } else {
            Box::new(r)
        };
        if !(200..300).contains(&status) {
            let mut b = vec![];
            body.read_to_end(&mut b).map_err(&io)?;
            let message = serde_json::from_slice::<crate::daemon::types::ErrorBody>(&b)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&b).trim().to_string());
            return Err(ClientError::Api { status, message });
        }
        Ok(Streamed {
            status,
            headers,
            body,
        })
    }
}

/// Decodes a chunked body as it is read.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: std::io::BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Err(bad("truncated chunked body"));
            }
            if line.trim().is_empty() {
                // The CRLF that ends the previous chunk.
                line.clear();
                if self.inner.read_line(&mut line)? == 0 {
                    return Err(bad("truncated chunked body"));
                }
            }
            let size = line.trim().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let n = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..n])?;
        if got == 0 {
            return Err(bad("truncated chunk"));
        }
        self.left -= got;
        Ok(got)
    }
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(b).map_err(|e| ClientError::Protocol(format!("bad JSON: {e}")))
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse::<usize>().ok();
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if rest.len() < n {
            return Err("truncated body".into());
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = vec![];
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_s = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk header")?;
        let size_s = size_s.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_s, 16).map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A request's line and the headers every request has, without the blank
/// line that ends them.
fn request_head(method: &str, path: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: tapnet\r\nUser-Agent: tapnet-cli/{}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host(Some("unix:///tmp/x.sock")).unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        assert!(parse_host(Some("tcp://1.2.3.4:2375")).is_err());
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
