//! nginx `server_name` selection.
//!
//! Order (nginx's, exactly): an exact name; else the longest leading wildcard (`*.example.org`, which matches any
//! number of labels, or `.example.org`, which also matches `example.org` itself); else the longest trailing
//! wildcard (`www.example.*`); else the first regex (`~...`) in declaration order; else the default server.
//! Names are compared lowercase; the Host given to `select` must already be normalized by `normalize_host`.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::HashMap;

use regex::Regex;

/// Why a Host header was refused; nginx answers 400 to each of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHost {
    Empty,
    DoubleDot,
    BadByte,
}

/// Normalize a Host header value as nginx's `ngx_http_validate_host` does: drop the port (`:...`, outside
/// brackets), drop one trailing dot, lowercase; refuse empty names, `..`, `/`, NUL, controls and space.
pub fn normalize_host(raw: &[u8]) -> Result<Cow<'_, str>, BadHost> {
    #[derive(PartialEq)]
    enum State {
        Usual,
        Literal,
        Rest,
    }
    let mut state = State::Usual;
    let mut host_len = raw.len();
    let mut last_dot: Option<usize> = None;
    // Uppercase or non-ASCII: the name must be copied to be lowercased.
    let mut lowered = false;
    for (i, &ch) in raw.iter().enumerate() {
        // Nearly every byte of a Host: nothing to check.
        if PLAIN_HOST_BYTE[usize::from(ch)] {
            continue;
        }
        match ch {
            b'.' => {
                if i > 0 && last_dot == Some(i - 1) {
                    return Err(BadHost::DoubleDot);
                }
                last_dot = Some(i);
            }
            b':' if state == State::Usual => {
                host_len = i;
                state = State::Rest;
            }
            b'[' if i == 0 => state = State::Literal,
            b']' if state == State::Literal => {
                host_len = i + 1;
                state = State::Rest;
            }
            b':' | b'[' | b']' => {}
            // nginx refuses only its path separator, `/`, on Unix; a backslash is a (useless) name byte.
            b'/' | 0 => return Err(BadHost::BadByte),
            c if c <= 0x20 || c == 0x7f => return Err(BadHost::BadByte),
            c => lowered |= c.is_ascii_uppercase() || !c.is_ascii(),
        }
    }
    if host_len > 0 && last_dot == Some(host_len - 1) {
        host_len -= 1;
    }
    if host_len == 0 {
        return Err(BadHost::Empty);
    }
    let host = &raw[..host_len];
    // Already lowercase UTF-8, as nearly every Host is: borrowed as is, nothing copied.
    match std::str::from_utf8(host) {
        Ok(text) if !lowered => Ok(Cow::Borrowed(text)),
        // Non-ASCII bytes are kept (nginx compares bytes); lossy UTF-8 only affects names no config can contain.
        _ => Ok(Cow::Owned(
            String::from_utf8_lossy(host).to_ascii_lowercase(),
        )),
    }
}

/// `a-z`, `0-9` and `-`: the bytes `normalize_host` has nothing to check or change in, one table load each.
static PLAIN_HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
        b += 1;
    }
    table
};

/// A compiled set of server names for one listen, mapping a Host to a server index.
#[derive(Debug, Default)]
pub struct ServerNames {
    exact: HashMap<String, usize>,
    /// Leading wildcards as (suffix with its leading dot, also_bare, server), longest suffix first.
    leading: Vec<(String, bool, usize)>,
    /// Trailing wildcards as (prefix with its trailing dot, server), longest prefix first.
    trailing: Vec<(String, usize)>,
    regexes: Vec<(Regex, usize)>,
    default: usize,
}

/// A server_name that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName(pub String);

impl ServerNames {
    /// Compile the names of every server (outer index = server index). `default` is the server for unmatched
    /// Hosts. The first server to declare a name wins, as in nginx (which warns about the conflict).
    pub fn new(servers: &[Vec<String>], default: usize) -> Result<ServerNames, BadName> {
        let mut names = ServerNames {
            default,
            ..Default::default()
        };
        for (index, list) in servers.iter().enumerate() {
            for name in list {
                names.add(name, index)?;
            }
        }
        // Stable sorts keep declaration order among equal lengths (first declared wins).
        names
            .leading
            .sort_by_key(|(suffix, _, _)| std::cmp::Reverse(suffix.len()));
        names
            .trailing
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(names)
    }

    fn add(&mut self, name: &str, index: usize) -> Result<(), BadName> {
        if let Some(pattern) = name.strip_prefix('~') {
            let re = Regex::new(pattern)
                .map_err(|e| BadName(format!("server_name {name:?}: bad regex: {e}")))?;
            self.regexes.push((re, index));
            return Ok(());
        }
        let name = name.to_ascii_lowercase();
        if let Some(suffix) = name.strip_prefix("*.") {
            check_plain(&name, suffix)?;
            if !self.leading.iter().any(|(s, _, _)| s[1..] == *suffix) {
                self.leading.push((format!(".{suffix}"), false, index));
            }
        } else if let Some(suffix) = name.strip_prefix('.') {
            // nginx: ".example.org" is "example.org" plus "*.example.org", both at wildcard precedence.
            check_plain(&name, suffix)?;
            if !self.leading.iter().any(|(s, _, _)| s[1..] == *suffix) {
                self.leading.push((format!(".{suffix}"), true, index));
            }
        } else if let Some(prefix) = name.strip_suffix(".*") {
            check_plain(&name, prefix)?;
            if !self
                .trailing
                .iter()
                .any(|(p, _)| p[..p.len() - 1] == *prefix)
            {
                self.trailing.push((format!("{prefix}."), index));
            }
        } else if name.contains('*') {
            return Err(BadName(format!(
                "server_name {name:?}: a wildcard may only be `*.` at the start or `.*` at the end"
            )));
        } else {
            let bare = name.strip_suffix('.').unwrap_or(&name).to_string();
            self.exact.entry(bare).or_insert(index);
        }
        Ok(())
    }

    /// The server index for a normalized Host (see `normalize_host`); `None` (no Host) gives the default.
    pub fn select(&self, host: Option<&str>) -> usize {
        let Some(host) = host else {
            return self.default;
        };
        if let Some(&index) = self.exact.get(host) {
            return index;
        }
        for (suffix, also_bare, index) in &self.leading {
            // nginx matches an empty first label too: ".example.org" is in "*.example.org".
            if host.ends_with(suffix.as_str()) || (*also_bare && host == &suffix[1..]) {
                return *index;
            }
        }
        for (prefix, index) in &self.trailing {
            if host.len() > prefix.len() && host.starts_with(prefix.as_str()) {
                return *index;
            }
        }
        for (re, index) in &self.regexes {
            if re.is_match(host) {
                return *index;
            }
        }
        self.default
    }
}

fn check_plain(name: &str, rest: &str) -> Result<(), BadName> {
    if rest.is_empty() || rest.contains('*') {
        return Err(BadName(format!(
            "server_name {name:?}: a wildcard needs a name part and only one `*`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(servers: &[&[&str]], default: usize) -> ServerNames {
        let servers: Vec<Vec<String>> = servers
            .iter()
            .map(|s| s.iter().map(|n| n.to_string()).collect())
            .collect();
        ServerNames::new(&servers, default).unwrap()
    }

    fn pick(n: &ServerNames, host: &str) -> usize {
        n.select(Some(&normalize_host(host.as_bytes()).unwrap()))
    }

    #[test]
    fn precedence_is_exact_then_leading_then_trailing_then_regex_then_default() {
        let n = names(
            &[
                &["default.test"],
                &["www.example.org"],
                &["*.example.org"],
                &["*.a.example.org"],
                &["www.example.*"],
                &["~^www\\d+\\.example\\.net$"],
                &["~^www"],
                &[".dot.test"],
            ],
            0,
        );
        assert_eq!(pick(&n, "www.example.org"), 1);
        assert_eq!(pick(&n, "WWW.Example.ORG."), 1);
        assert_eq!(pick(&n, "x.example.org"), 2);
        assert_eq!(pick(&n, "x.y.example.org"), 2);
        assert_eq!(pick(&n, "b.a.example.org"), 3);
        assert_eq!(pick(&n, "a.example.org"), 2);
        assert_eq!(pick(&n, "example.org"), 0);
        assert_eq!(
            pick(&n, ".example.org"),
            2,
            "nginx: an empty first label matches a leading wildcard"
        );
        assert_eq!(pick(&n, "www.example.com"), 4);
        assert_eq!(pick(&n, "www.example.co.uk"), 4);
        assert_eq!(pick(&n, "www.example"), 6);
        assert_eq!(pick(&n, "www12.example.net"), 5);
        assert_eq!(pick(&n, "wwwx"), 6);
        assert_eq!(pick(&n, "dot.test"), 7);
        assert_eq!(pick(&n, "a.dot.test"), 7);
        assert_eq!(pick(&n, "unknown"), 0);
        assert_eq!(n.select(None), 0);
    }

    #[test]
    fn host_normalization_follows_nginx() {
        assert_eq!(normalize_host(b"Example.COM:8080").unwrap(), "example.com");
        assert_eq!(normalize_host(b"example.com.").unwrap(), "example.com");
        assert_eq!(normalize_host(b"[::1]:80").unwrap(), "[::1]");
        assert_eq!(normalize_host(b"10.0.0.1:80").unwrap(), "10.0.0.1");
        assert_eq!(normalize_host(b""), Err(BadHost::Empty));
        assert_eq!(normalize_host(b":80"), Err(BadHost::Empty));
        assert_eq!(normalize_host(b"."), Err(BadHost::Empty));
        assert_eq!(normalize_host(b"a..b"), Err(BadHost::DoubleDot));
        assert_eq!(normalize_host(b"a/b"), Err(BadHost::BadByte));
        assert_eq!(normalize_host(b"a b"), Err(BadHost::BadByte));
    }

    #[test]
    fn longest_wildcard_wins_regardless_of_order() {
        let n = names(
            &[
                &["*.compute.amazonaws.com"],
                &["*.us-west-2.compute.amazonaws.com"],
            ],
            0,
        );
        assert_eq!(pick(&n, "ec2-1-2-3-4.us-west-2.compute.amazonaws.com"), 1);
        assert_eq!(pick(&n, "ec2-1-2-3-4.eu-west-1.compute.amazonaws.com"), 0);
    }

    #[test]
    fn bad_names_are_errors() {
        assert!(ServerNames::new(&[vec!["a*b".into()]], 0).is_err());
        assert!(ServerNames::new(&[vec!["~(".into()]], 0).is_err());
        assert!(ServerNames::new(&[vec!["*.".into()]], 0).is_err());
    }
}
