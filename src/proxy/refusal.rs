//! Why this process (the proxy) cannot connect to a unix socket, in words for its error log.
#![forbid(unsafe_code)]

use std::path::Path;

use crate::unix_reach::{self, Who};

/// The reason for a connect to `path` refused with EACCES: what is in the way, for whom.
pub fn why_refused(path: &Path) -> String {
    match unix_reach::check_as_me(path) {
        Some(denied) => explain(&denied),
        None => format!("permission denied for {}", Who::current()),
    }
}

pub fn explain(denied: &unix_reach::Denied) -> String {
    format!("the proxy runs as {}: {denied}", Who::current())
}
