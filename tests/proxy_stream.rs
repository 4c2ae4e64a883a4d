//! 1 GiB up and 1 GiB down through the proxy, with the proxy's peak RSS (VmHWM) bounded: bodies are streamed.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use support::free_port;
use support::http::read_reply;
use support::proxy::{Echo, ProxyProcess};

const GIB: u64 = 1 << 30;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

#[test]
fn one_gib_each_way_with_flat_rss() {
    let echo = Echo::start("e");
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[init]\nlogs_dir = \"{}\"\n[proxy]\nlisten = [\"{addr}\"]\nclient_max_body_size = \"2GiB\"\n\
         [[proxy.server]]\nserver_name = [\"t\"]\n  [[proxy.server.location]]\n  path = \"/\"\n  upstream = \"{}\"\n",
        dir.path().display(),
        echo.addr
    );
    let proxy = ProxyProcess::start(dir.path(), &config, addr);

    // Upload: the echo upstream counts what arrives.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {GIB}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let chunk = vec![b'u'; 1 << 20];
    for _ in 0..(GIB >> 20) {
        stream.write_all(&chunk).unwrap();
    }
    let reply = read_reply(&mut BufReader::new(stream), false).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["body_len"], GIB);

    // Download: count without keeping.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(
            format!("GET /download?bytes={GIB} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        reader.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, GIB);

    let rss = proxy.peak_rss_kib();
    eprintln!("proxy peak RSS after 2 GiB streamed: {rss} KiB");
    assert!(
        rss < RSS_LIMIT_KIB,
        "peak RSS {rss} KiB >= {RSS_LIMIT_KIB} KiB: something buffered a body"
    );
}
