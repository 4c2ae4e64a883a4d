//! How two configs differ, in words: the keys of a section that changed, and the proxy's changes
//! server by server and location by location. `stackinit diff` shows these beside the reload plan.
#![forbid(unsafe_code)]

use serde::Serialize;
use serde_json::Value;

use super::{LocationSpec, ProxySpec, ServerSpec};

/// The top-level keys whose values differ between `a` and `b` (as serialized), in name order.
pub fn changed_keys<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Vec::new();
    };
    let mut keys: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn compact<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// One line per difference between two `[proxy]` sections (both present).
pub fn proxy_changes(old: &ProxySpec, new: &ProxySpec) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut lines: Vec<String> = changed_keys(old, new)
        .into_iter()
        .filter(|k| k != "server")
        .map(|k| {
            let show = |m: &serde_json::Map<String, Value>| {
                m.get(&k).map(compact).unwrap_or_else(|| "-".into())
            };
            format!("{k}: {} -> {}", show(&a), show(&b))
        })
        .collect();
    lines.extend(server_changes(&old.server, &new.server));
    lines
}

/// A server is known by its names (the first one suffices for people; all of them identify it).
fn server_label(server: &ServerSpec) -> String {
    if server.server_name.is_empty() {
        "(no server_name)".into()
    } else {
        server.server_name.join(" ")
    }
}

/// The server of `list` that is `server`: the one with the same names, else one sharing a name.
fn counterpart<'a>(server: &ServerSpec, list: &'a [ServerSpec]) -> Option<&'a ServerSpec> {
    let label = server_label(server);
    list.iter().find(|s| server_label(s) == label).or_else(|| {
        list.iter()
            .find(|s| s.server_name.iter().any(|n| server.server_name.contains(n)))
    })
}

fn server_changes(old: &[ServerSpec], new: &[ServerSpec]) -> Vec<String> {
    let mut lines = Vec::new();
    for server in old {
        let label = server_label(server);
        match counterpart(server, new) {
            None => lines.push(format!("server {label}: removed")),
            Some(now) if now == server => {}
            Some(now) => {
                if now.server_name != server.server_name {
                    lines.push(format!(
                        "server {label}: server_name -> {}",
                        server_label(now)
                    ));
                }
                if now.default != server.default {
                    lines.push(format!(
                        "server {label}: default {} -> {}",
                        server.default, now.default
                    ));
                }
                lines.extend(location_changes(&label, &server.location, &now.location));
            }
        }
    }
    for server in new {
        if counterpart(server, old).is_none() {
            lines.push(format!("server {}: added", server_label(server)));
        }
    }
    lines
}

fn location_label(location: &LocationSpec) -> String {
    if location.exact {
        format!("= {}", location.path)
    } else {
        location.path.clone()
    }
}

fn location_changes(server: &str, old: &[LocationSpec], new: &[LocationSpec]) -> Vec<String> {
    let mut lines = Vec::new();
    for location in old {
        let label = location_label(location);
        match new.iter().find(|l| location_label(l) == label) {
            None => lines.push(format!("server {server}: location {label} removed")),
            Some(now) if now != location => {
                let keys = changed_keys(location, now).join(", ");
                lines.push(format!(
                    "server {server}: location {label} changed ({keys})"
                ));
            }
            Some(_) => {}
        }
    }
    for location in new {
        let label = location_label(location);
        if !old.iter().any(|l| location_label(l) == label) {
            lines.push(format!("server {server}: location {label} added"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(text: &str) -> ProxySpec {
        let config = crate::config::parse(std::path::Path::new("t.toml"), text).expect("valid");
        config.proxy.expect("a proxy")
    }

    #[test]
    fn proxy_changes_name_keys_servers_and_locations() {
        let old = proxy("[proxy]\nlisten = [\"127.0.0.1:1\"]\n[[proxy.server]]\nserver_name = [\"a\"]\n[[proxy.server.location]]\npath = \"/\"\nreturn = 200\n[[proxy.server]]\nserver_name = [\"b\"]\n");
        let new = proxy("[proxy]\nlisten = [\"127.0.0.1:1\"]\nclient_max_body_size = \"10MB\"\n[[proxy.server]]\nserver_name = [\"a\"]\ndefault = true\n[[proxy.server.location]]\npath = \"/\"\nreturn = 204\n[[proxy.server.location]]\npath = \"/x\"\nexact = true\nreturn = 404\n[[proxy.server]]\nserver_name = [\"c\"]\n");
        assert_eq!(
            proxy_changes(&old, &new),
            vec![
                "client_max_body_size: \"1MB\" -> \"10MB\"",
                "server a: default false -> true",
                "server a: location / changed (return)",
                "server a: location = /x added",
                "server b: removed",
                "server c: added",
            ]
        );
        assert!(proxy_changes(&old, &old).is_empty());
    }
}
