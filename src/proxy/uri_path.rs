//! Request path normalization, as nginx does before matching locations: percent-decoding, merged slashes,
//! `.` and `..` segments resolved; a `..` above the root or a decoded NUL is a bad request.
#![forbid(unsafe_code)]

/// The decoded, normalized path, or `None` for a request nginx would answer with 400.
pub fn normalize(raw: &str) -> Option<String> {
    if !raw.starts_with('/') {
        return None;
    }
    let decoded = percent_decode(raw.as_bytes())?;
    let mut segments: Vec<&[u8]> = Vec::new();
    let trailing_slash =
        decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop()?;
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    // Paths are bytes; lossy UTF-8 only changes names no location or file can be written with in TOML anyway.
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            if i + 2 >= raw.len() {
                return None;
            }
            let hi = (raw[i + 1] as char).to_digit(16);
            let lo = (raw[i + 2] as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                let v = (hi * 16 + lo) as u8;
                if v == 0 {
                    return None;
                }
                out.push(v);
                i += 3;
                continue;
            }
            return None;
        }
        out.push(b);
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalizes_like_nginx() {
        assert_eq!(normalize("/").as_deref(), Some("/"));
        assert_eq!(normalize("/a//b/./c/").as_deref(), Some("/a/b/c/"));
        assert_eq!(normalize("/a/../b").as_deref(), Some("/b"));
        assert_eq!(normalize("/a/%2e%2e/b").as_deref(), Some("/b"));
        assert_eq!(normalize("/a/..").as_deref(), Some("/"));
        assert_eq!(normalize("/%41b").as_deref(), Some("/Ab"));
        assert_eq!(normalize("/.."), None);
        assert_eq!(normalize("/a/../../etc/passwd"), None);
        assert_eq!(normalize("/%2e%2e/etc/passwd"), None);
        assert_eq!(normalize("/a%00b"), None);
        assert_eq!(normalize("/a%zz"), None);
        assert_eq!(normalize("/a%4"), None);
        assert_eq!(normalize("a"), None);
    }
}
