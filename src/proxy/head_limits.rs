//! The request head limit (`max_header_size`), with nginx's distinction: a request line that alone is too
//! long gets 414 (URI Too Long), a head that is too large gets 431 (nginx: 400).
//!
//! hyper cannot tell the two apart: a head that fills its buffer is 431 whatever made it large. So hyper's
//! buffer is `max_header_size` plus room for a request line of up to 128 KiB, and the limit itself is applied
//! here, to the parsed request. A URI longer than hyper's own maximum (64 KiB) that still fits the buffer gets
//! hyper's 414; only a head past the buffer (a URI of more than ~160 KiB by default) still gets hyper's 431.
#![forbid(unsafe_code)]

use hyper::{Request, StatusCode, Uri};

/// Room past `max_header_size` in hyper's read buffer, so that a long request line is still parsed as one.
const REQUEST_LINE_ROOM: usize = 128 * 1024;

/// hyper's read buffer for a head (its `max_buf_size`): the configured limit plus room for a long request line.
pub fn hyper_buffer(max_header_size: usize) -> usize {
    max_header_size + REQUEST_LINE_ROOM
}

/// 414 if the request target alone is over `max` bytes, 431 if the whole head is, else `None`. The head is
/// counted as HTTP/1.1 would send it (name, `: `, value and CRLF per header), whatever the protocol.
pub fn check<B>(req: &Request<B>, max: usize) -> Option<StatusCode> {
    let target = target_len(req.uri());
    if target > max {
        return Some(StatusCode::URI_TOO_LONG);
    }
    // "GET " + target + " HTTP/1.1\r\n" ... "\r\n"
    let mut head = req.method().as_str().len() + 1 + target + 11 + 2;
    for (name, value) in req.headers() {
        head += name.as_str().len() + value.len() + 4;
        if head > max {
            return Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
    }
    None
}

/// The request target's length as sent: `/path?query`, or `scheme://authority/path?query` (absolute-form).
fn target_len(uri: &Uri) -> usize {
    let origin = uri.path_and_query().map_or(1, |p| p.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => scheme.len() + 3 + authority.as_str().len() + origin,
        _ => origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn a_long_target_is_414_a_large_head_431() {
        let long = format!("/{}", "a".repeat(2000));
        assert_eq!(
            check(&request(&long, &[]), 1024),
            Some(StatusCode::URI_TOO_LONG)
        );
        let absolute = format!("http://example.org/{}", "a".repeat(1010));
        assert_eq!(
            check(&request(&absolute, &[]), 1024),
            Some(StatusCode::URI_TOO_LONG)
        );
        let big = "b".repeat(1000);
        assert_eq!(
            check(&request("/", &[("x-big", &big)]), 1024),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        assert_eq!(check(&request("/", &[("x-ok", "1")]), 1024), None);
        assert_eq!(check(&request(&long[..900], &[]), 1024), None);
    }
}
