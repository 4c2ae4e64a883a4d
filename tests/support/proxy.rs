//! The proxy on its own: a standalone `stackinit proxy` process and an echo upstream.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::http::{read_chunked, read_headers};
use super::{poll_every, Guarded, BIN};

/// A standalone `stackinit proxy --config FILE`, stdout (the access log) and stderr kept in files.
pub struct ProxyProcess {
    pub process: Guarded,
    pub dir: PathBuf,
}

impl ProxyProcess {
    pub fn start(dir: &Path, config: &str, wait_on: SocketAddr) -> ProxyProcess {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).expect("write proxy config");
        let mut proxy = ProxyProcess {
            process: Guarded::spawn(
                Command::new(BIN)
                    .arg("proxy")
                    .arg("--config")
                    .arg(&path)
                    .stdout(std::fs::File::create(dir.join("access.log")).expect("access log"))
                    .stderr(std::fs::File::create(dir.join("proxy.err")).expect("proxy.err")),
                "stackinit proxy",
            ),
            dir: dir.to_path_buf(),
        };
        let listening = poll_every(Duration::from_millis(20), Duration::from_secs(20), || {
            if TcpStream::connect_timeout(&wait_on, Duration::from_millis(200)).is_ok() {
                return Some(true);
            }
            proxy.process.exited().then_some(false)
        });
        match listening {
            Some(true) => proxy,
            Some(false) => panic!("proxy exited early: {}", proxy.stderr()),
            None => panic!("proxy not listening on {wait_on}: {}", proxy.stderr()),
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.err")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Peak RSS (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .expect("the proxy's /proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM line");
        line.split_whitespace()
            .nth(1)
            .and_then(|kib| kib.parse().ok())
            .expect("VmHWM in KiB")
    }
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
        Echo::serve(
            TcpListener::bind("127.0.0.1:0").expect("bind the echo upstream"),
            id,
            false,
        )
    }

    /// On a given address; `serial` serves one connection at a time and closes it after each response, like a
    /// gunicorn sync worker.
    pub fn start_on(addr: &str, id: &str, serial: bool) -> Echo {
        Echo::serve(
            TcpListener::bind(addr)
                .unwrap_or_else(|e| panic!("bind the echo upstream to {addr}: {e}")),
            id,
            serial,
        )
    }

    fn serve(listener: TcpListener, id: &str, serial: bool) -> Echo {
        let addr = listener.local_addr().expect("echo address");
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
        let (_, headers) = read_headers(&mut reader)?;
        requests.fetch_add(1, Ordering::Relaxed);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        // Bodies are counted, not kept: uploads go up to 1 GiB.
        let body_len = if let Some(len) = header("content-length").and_then(|v| v.parse().ok()) {
            if io::copy(&mut (&mut reader).take(len), &mut io::sink())? < len {
                return Ok(());
            }
            len
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            read_chunked(&mut reader, &mut io::sink())?
        } else {
            0
        };
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
