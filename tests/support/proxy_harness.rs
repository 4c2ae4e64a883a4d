//! Test helpers for the proxy's black-box tests: a standalone proxy process, an echo upstream, a raw HTTP client.
//! Everything started here is killed by pid when its guard drops, even when a test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stackinit");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something accepts on `addr` (bounded).
pub fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listening on {addr} after 20 s");
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Guarded {
    pub child: Child,
    pub name: String,
}

impl Guarded {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A standalone `stackinit proxy --config FILE`, stdout (the access log) and stderr kept in files.
pub struct ProxyProcess {
    pub process: Guarded,
    pub dir: PathBuf,
}

impl ProxyProcess {
    pub fn start(dir: &Path, config: &str, wait_on: SocketAddr) -> ProxyProcess {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(BIN)
            .arg("proxy")
            .arg("--config")
            .arg(&path)
            .stdout(std::fs::File::create(dir.join("access.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("proxy.err")).unwrap())
            .spawn()
            .expect("start stackinit proxy");
        let mut proxy = ProxyProcess {
            process: Guarded {
                child,
                name: "proxy".into(),
            },
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&wait_on, Duration::from_millis(200)).is_ok() {
                return proxy;
            }
            if let Ok(Some(status)) = proxy.process.child.try_wait() {
                panic!("proxy exited early ({status}): {}", proxy.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("proxy not listening on {wait_on}: {}", proxy.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.err")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Peak RSS (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Send raw bytes on a fresh connection and read one response (`Connection: close` belongs in `raw`).
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(raw)?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader, raw.starts_with(b"HEAD "))
}

pub fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<Reply> {
    raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn read_reply<R: BufRead>(reader: &mut R, head_only: bool) -> std::io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut reply = Reply {
        status,
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
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        reply.body = body;
    } else if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            reply.body.extend_from_slice(&chunk[..n]);
        }
    } else {
        reader.read_to_end(&mut reply.body)?;
    }
    Ok(reply)
}

/// An HTTP/1.1 upstream (thread per connection, keep-alive) that answers with what it saw, as JSON:
/// `{"id", "method", "target", "headers": [[name, value]...], "body_len"}`. Special paths:
/// `/download?bytes=N` streams N bytes; `/slow?ms=N` sleeps first; `/hang` never answers;
/// an `Upgrade: websocket` request gets a 101 and a WebSocket echo.
pub struct Echo {
    pub addr: SocketAddr,
    pub id: String,
    stop: Arc<AtomicBool>,
    pub requests: Arc<AtomicUsize>,
}

impl Echo {
    pub fn start(id: &str) -> Echo {
        Echo::serve(TcpListener::bind("127.0.0.1:0").unwrap(), id, false)
    }

    /// On a given address; `serial` serves one connection at a time and closes it after each response, like a
    /// gunicorn sync worker.
    pub fn start_on(addr: &str, id: &str, serial: bool) -> Echo {
        Echo::serve(TcpListener::bind(addr).unwrap(), id, serial)
    }

    fn serve(listener: TcpListener, id: &str, serial: bool) -> Echo {
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let echo = Echo {
            addr,
            id: id.to_string(),
            stop: Arc::clone(&stop),
            requests: Arc::clone(&requests),
        };
        let id = id.to_string();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let id = id.clone();
                let requests = Arc::clone(&requests);
                if serial {
                    let _ = serve_echo(stream, &id, &requests, true);
                } else {
                    thread::spawn(move || {
                        let _ = serve_echo(stream, &id, &requests, false);
                    });
                }
            }
        });
        echo
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_echo(
    stream: TcpStream,
    id: &str,
    requests: &AtomicUsize,
    close: bool,
) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        requests.fetch_add(1, Ordering::Relaxed);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body_len: u64 = 0;
        const BUF: usize = 64 * 1024;
        let mut buf = vec![0u8; BUF];
        if let Some(len) = header("content-length").and_then(|v| v.parse::<u64>().ok()) {
            let mut left = len;
            while left > 0 {
                let n = reader.read(&mut buf[..left.min(BUF as u64) as usize])?;
                if n == 0 {
                    return Ok(());
                }
                left -= n as u64;
            }
            body_len = len;
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size)?;
                let n = u64::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                let mut left = n + 2;
                while left > 0 {
                    let got = reader.read(&mut buf[..left.min(BUF as u64) as usize])?;
                    if got == 0 {
                        return Ok(());
                    }
                    left -= got as u64;
                }
                if n == 0 {
                    break;
                }
                body_len += n;
            }
        }
        let query = |key: &str| -> Option<u64> {
            target
                .split_once('?')?
                .1
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))?
                .parse()
                .ok()
        };
        let path = target.split('?').next().unwrap_or("");
        if header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
            writer.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            )?;
            return websocket_echo(&mut reader, &mut writer);
        }
        if path == "/hang" {
            thread::sleep(Duration::from_secs(120));
            return Ok(());
        }
        if path == "/slow" {
            thread::sleep(Duration::from_millis(query("ms").unwrap_or(100)));
        }
        if path == "/download" {
            let total = query("bytes").unwrap_or(0);
            writer.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
            )?;
            let chunk = vec![b'x'; 256 * 1024];
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                writer.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            continue;
        }
        let body = serde_json::json!({
            "id": id, "method": method, "target": target, "headers": headers, "body_len": body_len,
        })
        .to_string();
        let connection = if close { "Connection: close\r\n" } else { "" };
        writer.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{connection}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )?;
        if close || header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            return Ok(());
        }
    }
}

/// Echo WebSocket frames (client frames are masked; replies are not), until a close frame or EOF.
fn websocket_echo<R: Read, W: Write>(reader: &mut R, writer: &mut W) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 2];
        reader.read_exact(&mut head)?;
        let opcode = head[0] & 0x0f;
        let mut len = (head[1] & 0x7f) as usize;
        if len == 126 {
            let mut ext = [0u8; 2];
            reader.read_exact(&mut ext)?;
            len = u16::from_be_bytes(ext) as usize;
        }
        let mut mask = [0u8; 4];
        if head[1] & 0x80 != 0 {
            reader.read_exact(&mut mask)?;
        }
        let mut payload = vec![0u8; len];
        reader.read_exact(&mut payload)?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        writer.write_all(&ws_frame(opcode, &payload, None))?;
        if opcode == 8 {
            return Ok(());
        }
    }
}

/// A WebSocket frame (FIN set); masked with `mask` when given (client to server).
pub fn ws_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if payload.len() < 126 {
        out.push(mask_bit | payload.len() as u8);
    } else {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}
