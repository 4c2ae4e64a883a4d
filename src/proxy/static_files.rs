//! Static files for `root`/`alias` locations: index files, no escape from the root (neither `..` nor symlinks),
//! Content-Type, ETag/Last-Modified with 304s, and single byte ranges (206/416). Files are streamed in chunks.
#![forbid(unsafe_code)]

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use tokio::io::{AsyncRead, ReadBuf};

use super::body::{empty, full, BoxError, ProxyBody};

const CHUNK: usize = 64 * 1024;

/// A static location, compiled.
#[derive(Debug, Clone)]
pub struct StaticSpec {
    /// File path = root + request path (nginx `root`) ...
    pub root: Option<PathBuf>,
    /// ... or alias + request path without the location prefix (nginx `alias`).
    pub alias: Option<PathBuf>,
    pub prefix: String,
    pub index: Vec<String>,
}

/// Serve `path` (decoded and normalized, see `uri_path`) from this location.
pub async fn serve(
    spec: &StaticSpec,
    path: &str,
    query: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
) -> Response<ProxyBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = simple(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let spec = spec.clone();
    let path = path.to_string();
    let query = query.map(str::to_string);
    let resolved =
        tokio::task::spawn_blocking(move || resolve(&spec, &path, query.as_deref())).await;
    let opened = match resolved {
        Ok(Ok(opened)) => opened,
        Ok(Err(Refusal::Status(status))) => return simple(status),
        Ok(Err(Refusal::Redirect(location))) => {
            let mut r = simple(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        Err(_) => return simple(StatusCode::INTERNAL_SERVER_ERROR),
    };
    respond(opened, method == Method::HEAD, headers)
}

/// Why a path is not served: a status, or a redirect to the directory with its trailing slash.
enum Refusal {
    Status(StatusCode),
    Redirect(String),
}

struct Opened {
    file: std::fs::File,
    len: u64,
    modified: SystemTime,
    content_type: &'static str,
}

/// Map the request to a file inside the root, refusing anything that resolves outside it.
fn resolve(spec: &StaticSpec, path: &str, query: Option<&str>) -> Result<Opened, Refusal> {
    let (base, relative) = match (&spec.root, &spec.alias) {
        (Some(root), _) => (root, path),
        (None, Some(alias)) => (
            alias,
            path.strip_prefix(spec.prefix.as_str()).unwrap_or(path),
        ),
        (None, None) => return Err(Refusal::Status(StatusCode::NOT_FOUND)),
    };
    let base = base.canonicalize().map_err(|e| {
        tracing::warn!("static root {}: {e}", base.display());
        Refusal::Status(StatusCode::NOT_FOUND)
    })?;
    let mut candidate = base.join(relative.trim_start_matches('/'));
    if path.ends_with('/') {
        if !candidate.is_dir() {
            return Err(Refusal::Status(StatusCode::NOT_FOUND));
        }
        let index = if spec.index.is_empty() {
            vec!["index.html".to_string()]
        } else {
            spec.index.clone()
        };
        match index
            .iter()
            .map(|name| candidate.join(name))
            .find(|p| p.is_file())
        {
            Some(found) => candidate = found,
            // nginx without autoindex: a directory with no index is forbidden.
            None => return Err(Refusal::Status(StatusCode::FORBIDDEN)),
        }
    }
    let real = candidate
        .canonicalize()
        .map_err(|_| Refusal::Status(StatusCode::NOT_FOUND))?;
    if !real.starts_with(&base) {
        tracing::warn!(
            "refusing {}: resolves outside {}",
            candidate.display(),
            base.display()
        );
        return Err(Refusal::Status(StatusCode::NOT_FOUND));
    }
    let meta = std::fs::metadata(&real).map_err(|_| Refusal::Status(StatusCode::NOT_FOUND))?;
    if meta.is_dir() {
        let location = match query {
            Some(q) => format!("{path}/?{q}"),
            None => format!("{path}/"),
        };
        return Err(Refusal::Redirect(location));
    }
    let file = std::fs::File::open(&real).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => Refusal::Status(StatusCode::FORBIDDEN),
        _ => Refusal::Status(StatusCode::NOT_FOUND),
    })?;
    Ok(Opened {
        file,
        len: meta.len(),
        modified: meta.modified().unwrap_or(UNIX_EPOCH),
        content_type: content_type(&real),
    })
}

fn respond(mut opened: Opened, head_only: bool, headers: &HeaderMap) -> Response<ProxyBody> {
    let mtime = opened
        .modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let etag = format!("\"{mtime:x}-{:x}\"", opened.len);
    let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(mtime));
    let mut response = Response::new(empty());
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(opened.content_type),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if not_modified(headers, &etag, mtime) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    let mut start = 0;
    let mut len = opened.len;
    if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        if if_range_ok(headers, &etag, &last_modified) {
            match parse_range(range, opened.len) {
                RangeResult::Full => {}
                RangeResult::Partial(first, last) => {
                    start = first;
                    len = last - first + 1;
                    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                    let v = format!("bytes {first}-{last}/{}", opened.len);
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        response.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                }
                RangeResult::Unsatisfiable => {
                    let mut r = simple(StatusCode::RANGE_NOT_SATISFIABLE);
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", opened.len)) {
                        r.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return r;
                }
            }
        }
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if head_only || len == 0 {
        return response;
    }
    if start > 0 && opened.file.seek(SeekFrom::Start(start)).is_err() {
        return simple(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let file = tokio::fs::File::from_std(opened.file);
    *response.body_mut() = super::body::boxed(FileBody {
        file,
        remaining: len,
        buf: BytesMut::new(),
    });
    response
}

fn not_modified(headers: &HeaderMap, etag: &str, mtime: u64) -> bool {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag));
    }
    if let Some(ims) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
    {
        if let Ok(since) = httpdate::parse_http_date(ims) {
            let since = since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            return mtime <= since;
        }
    }
    false
}

fn if_range_ok(headers: &HeaderMap, etag: &str, last_modified: &str) -> bool {
    match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v == etag || v == last_modified,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeResult {
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (first-last, first-, or -suffix). Several ranges get the whole file, which is allowed.
fn parse_range(value: &str, size: u64) -> RangeResult {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeResult::Full;
    };
    if spec.contains(',') {
        return RangeResult::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeResult::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    if first.is_empty() {
        let Some(suffix) = parse(last) else {
            return RangeResult::Full;
        };
        if suffix == 0 || size == 0 {
            return RangeResult::Unsatisfiable;
        }
        return RangeResult::Partial(size.saturating_sub(suffix), size - 1);
    }
    let Some(first) = parse(first) else {
        return RangeResult::Full;
    };
    if first >= size {
        return RangeResult::Unsatisfiable;
    }
    let last = if last.is_empty() {
        size - 1
    } else {
        match parse(last) {
            Some(l) if l >= first => l.min(size - 1),
            _ => return RangeResult::Full,
        }
    };
    RangeResult::Partial(first, last)
}

fn simple(status: StatusCode) -> Response<ProxyBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The MIME types nginx's default `mime.types` gives the files web apps serve most.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" | "shtml" => "text/html",
        "css" => "text/css",
        "xml" => "text/xml",
        "txt" => "text/plain",
        "js" | "mjs" => "application/javascript",
        "json" => "application/json",
        "map" => "application/json",
        "gif" => "image/gif",
        "jpeg" | "jpg" => "image/jpeg",
        "png" => "image/png",
        "svg" | "svgz" => "image/svg+xml",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "avif" => "image/avif",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "wasm" => "application/wasm",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "csv" => "text/csv",
        _ => "application/octet-stream",
    }
}

/// A file streamed in CHUNK-sized frames, never read whole.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: BytesMut,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = (this.remaining.min(CHUNK as u64)) as usize;
        if this.buf.capacity() < want {
            this.buf.reserve(want);
        }
        this.buf.resize(want, 0);
        let mut read_buf = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut read_buf) {
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err("file shrank while being sent".into())));
                }
                this.remaining -= n as u64;
                let chunk = this.buf.split_to(n).freeze();
                this.buf.clear();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeResult::Partial(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeResult::Partial(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeResult::Partial(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), RangeResult::Partial(0, 99));
        assert_eq!(
            parse_range("bytes=50-500", 100),
            RangeResult::Partial(50, 99)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeResult::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeResult::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeResult::Full);
        assert_eq!(parse_range("bytes=9-1", 100), RangeResult::Full);
    }

    #[test]
    fn types() {
        assert_eq!(content_type(Path::new("a/b.CSS")), "text/css");
        assert_eq!(content_type(Path::new("x")), "application/octet-stream");
    }
}
