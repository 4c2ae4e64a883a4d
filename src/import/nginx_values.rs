//! nginx's value syntax (sizes `10m`, times `1m30s`) in stackinit's units, and why each directive that
//! stackinit does not express is left out.
#![forbid(unsafe_code)]

/// An nginx size (`512`, `8k`, `10M`, `1g`) in bytes.
pub fn size(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let (number, scale) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1u64 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    number.parse::<u64>().ok()?.checked_mul(scale)
}

/// An nginx time (`60`, `60s`, `500ms`, `1m30s`, `1h`) in milliseconds.
pub fn millis(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(number.checked_mul(scale)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Milliseconds as stackinit writes durations.
pub fn duration_text(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Why a directive is not converted; None for directives whose effect stackinit has anyway.
pub fn why(name: &str) -> Option<&'static str> {
    Some(match name {
        "proxy_http_version" | "proxy_buffering" | "proxy_request_buffering" | "proxy_redirect"
        | "http2" | "keepalive" | "least_conn" | "sendfile" | "tcp_nopush" | "tcp_nodelay"
        | "server_tokens" | "default_type" | "types" | "types_hash_max_size" => return None,
        "set_real_ip_from" | "real_ip_header" | "real_ip_recursive" => {
            "stackinit takes the client address from the connection (it has no list of trusted proxies); \
             X-Forwarded-For gets that address appended"
        }
        "access_log" | "log_format" => {
            "stackinit writes one access log, <logs_dir>/access.log (nginx's combined format plus times), or [proxy] access_log"
        }
        "error_log" => "the proxy's errors go to <logs_dir>/proxy.err.log",
        "ssl_protocols" | "ssl_ciphers" | "ssl_prefer_server_ciphers" | "ssl_session_cache"
        | "ssl_session_timeout" | "ssl_session_tickets" | "ssl_dhparam" | "ssl_ecdh_curve"
        | "ssl_stapling" | "ssl_stapling_verify" | "ssl_trusted_certificate" | "ssl_buffer_size" => {
            "stackinit uses rustls's defaults (TLS 1.2 and 1.3, modern ciphers only)"
        }
        "add_header" | "more_set_headers" => "stackinit adds no response headers",
        "gzip" | "gzip_types" | "gzip_proxied" | "gzip_vary" | "gzip_comp_level" | "gzip_min_length"
        | "gzip_http_version" | "gzip_disable" | "gzip_buffers" => "stackinit does not compress responses",
        "rewrite" | "if" | "set" | "map" | "try_files" => "stackinit has no rewriting or conditions",
        "error_page" => "stackinit answers errors with its own short pages",
        "expires" | "etag" | "if_modified_since" => "stackinit sends ETag and answers If-None-Match itself; no Expires/Cache-Control",
        "autoindex" => "stackinit does not list directories",
        "auth_basic" | "auth_basic_user_file" | "allow" | "deny" | "satisfy" | "auth_request" => {
            "stackinit has no access control in the proxy"
        }
        "limit_req" | "limit_req_zone" | "limit_conn" | "limit_conn_zone" => "stackinit has no rate limits",
        "proxy_cache" | "proxy_cache_path" | "proxy_cache_valid" | "proxy_cache_key" => "stackinit does not cache",
        "worker_processes" | "worker_connections" | "worker_rlimit_nofile" | "events" | "user" | "pid"
        | "multi_accept" | "use" | "include_modules" | "load_module" => {
            "not needed: the stackinit proxy is one process run by init as an unprivileged user"
        }
        "charset" | "source_charset" => "stackinit does not add charsets",
        "uwsgi_pass" | "fastcgi_pass" | "scgi_pass" | "grpc_pass" => "stackinit proxies HTTP only",
        "uwsgi_param" | "fastcgi_param" | "fastcgi_index" | "scgi_param" => "stackinit proxies HTTP only",
        _ => "no stackinit equivalent",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times() {
        assert_eq!(size("10m"), Some(10 << 20));
        assert_eq!(size("512K"), Some(512 << 10));
        assert_eq!(size("1024"), Some(1024));
        assert_eq!(size("big"), None);
        assert_eq!(millis("60"), Some(60_000));
        assert_eq!(millis("1m30s"), Some(90_000));
        assert_eq!(millis("500ms"), Some(500));
        assert_eq!(millis("2h"), Some(7_200_000));
        assert_eq!(millis("5x"), None);
        assert_eq!(millis(""), None);
        assert_eq!(duration_text(90_000), "90s");
        assert_eq!(duration_text(1_500), "1500ms");
    }
}
