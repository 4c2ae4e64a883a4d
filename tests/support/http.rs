//! The one HTTP/1.1 client of the tests: a request on a fresh connection, to a loopback TCP address or a
//! unix socket, and its reply read by Content-Length, chunked, or to the end. [`get`] is the usual call;
//! [`Request`] adds a method, headers, a body and timeouts; [`raw_request`] sends bytes exactly as given.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a request goes.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Tcp(SocketAddr),
    Unix(&'a Path),
}

impl From<SocketAddr> for Target<'_> {
    fn from(addr: SocketAddr) -> Self {
        Target::Tcp(addr)
    }
}

/// A port on 127.0.0.1.
impl From<u16> for Target<'_> {
    fn from(port: u16) -> Self {
        Target::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

impl<'a> From<&'a Path> for Target<'a> {
    fn from(path: &'a Path) -> Self {
        Target::Unix(path)
    }
}

impl<'a> From<&'a PathBuf> for Target<'a> {
    fn from(path: &'a PathBuf) -> Self {
        Target::Unix(path)
    }
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(addr) => write!(f, "{addr}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A parsed HTTP response: `head` is the status line and header lines as received (CRLF between them),
/// `headers` the same with lowercased names.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; a body that is not JSON fails the test.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// (status, head in lower case, body as text).
    pub fn parts(&self) -> (u16, String, String) {
        (self.status, self.head.to_ascii_lowercase(), self.text())
    }
}

/// One request. `Host` is the address (`127.0.0.1:PORT`) for TCP and `localhost` for a unix socket
/// unless set; `Connection: close` is always sent; timeouts default to 30 s.
pub struct Request<'a> {
    target: Target<'a>,
    method: &'a str,
    path: &'a str,
    host: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
    connect_timeout: Duration,
    timeout: Duration,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl<'a> Request<'a> {
    pub fn new(target: impl Into<Target<'a>>, method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            target: target.into(),
            method,
            path,
            host: None,
            headers: Vec::new(),
            body: b"",
            connect_timeout: DEFAULT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn host(mut self, host: &'a str) -> Self {
        self.host = Some(host);
        self
    }

    pub fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn headers(mut self, headers: &[(&'a str, &'a str)]) -> Self {
        self.headers.extend_from_slice(headers);
        self
    }

    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = body;
        self
    }

    /// How long the connect may take.
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// How long any one read or write may wait.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// Send it and read the reply.
    pub fn send(&self) -> io::Result<Reply> {
        let host = match (self.host, self.target) {
            (Some(host), _) => host.to_string(),
            (None, Target::Tcp(addr)) => addr.to_string(),
            (None, Target::Unix(_)) => "localhost".to_string(),
        };
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
            self.method, self.path
        );
        if !self.body.is_empty() || !matches!(self.method, "GET" | "HEAD") {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(self.body);
        exchange(self.target, &raw, self.connect_timeout, self.timeout)
    }

    /// [`Request::send`], failing the test if the exchange fails.
    pub fn reply(&self) -> Reply {
        self.send().unwrap_or_else(|e| {
            panic!(
                "{} {} to {}: no reply: {e}",
                self.method, self.path, self.target
            )
        })
    }
}

/// GET `path` with `Host: host` on a fresh connection.
pub fn get<'a>(target: impl Into<Target<'a>>, host: &'a str, path: &'a str) -> io::Result<Reply> {
    Request::new(target, "GET", path).host(host).send()
}

/// Send `raw` as it is (`Connection: close` belongs in it) on a fresh connection and read one reply.
pub fn raw_request<'a>(target: impl Into<Target<'a>>, raw: &[u8]) -> io::Result<Reply> {
    exchange(target.into(), raw, DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)
}

fn exchange(
    target: Target<'_>,
    raw: &[u8],
    connect_timeout: Duration,
    timeout: Duration,
) -> io::Result<Reply> {
    let mut conn =
        connect(target, connect_timeout, timeout).map_err(context("connect to", target))?;
    conn.write_all(raw).map_err(context("write to", target))?;
    read_reply(&mut BufReader::new(conn), raw.starts_with(b"HEAD "))
        .map_err(context("read from", target))
}

trait Connection: Read + Write {}
impl<T: Read + Write> Connection for T {}

fn connect(
    target: Target<'_>,
    connect_timeout: Duration,
    timeout: Duration,
) -> io::Result<Box<dyn Connection>> {
    Ok(match target {
        Target::Tcp(addr) => {
            let stream = TcpStream::connect_timeout(&addr, connect_timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            Box::new(stream)
        }
        Target::Unix(path) => {
            let stream = UnixStream::connect(path)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            Box::new(stream)
        }
    })
}

/// Says where an I/O error happened; its kind stays (tests compare kinds).
fn context<'a>(step: &'static str, target: Target<'a>) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{step} {target}: {e}"))
}

/// Read one response from `reader` (no body after a HEAD, a 1xx, 204 or 304).
pub fn read_reply<R: BufRead>(reader: &mut R, head_only: bool) -> io::Result<Reply> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let (lines, headers) = read_headers(reader)?;
    let mut head = status_line.trim_end().to_string();
    for line in lines {
        head.push_str("\r\n");
        head.push_str(&line);
    }
    let mut reply = Reply {
        status,
        head,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 304 || status == 101 {
        return Ok(reply);
    }
    if let Some(len) = reply
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        reply.body = vec![0; len];
        reader.read_exact(&mut reply.body)?;
    } else if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        read_chunked(reader, &mut reply.body)?;
    } else {
        reader.read_to_end(&mut reply.body)?;
    }
    Ok(reply)
}

/// (lowercased name, value) pairs, in the order received.
pub type Headers = Vec<(String, String)>;

/// Header lines up to the blank line: the lines as received, and as [`Headers`].
pub fn read_headers<R: BufRead>(reader: &mut R) -> io::Result<(Vec<String>, Headers)> {
    let (mut lines, mut headers) = (Vec::new(), Vec::new());
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((lines, headers));
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        lines.push(line.to_string());
    }
}

/// Copy a chunked body to `sink`, a chunk at a time (a huge body is never held whole); its length.
pub fn read_chunked<R: BufRead>(reader: &mut R, sink: &mut impl Write) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let n = u64::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if io::copy(&mut reader.by_ref().take(n), sink)? < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}
