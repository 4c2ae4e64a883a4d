//! Checks of the `[init] dashboard*` keys: a parseable address, credentials that come in complete
//! pairs, no dashboard reachable from the network without credentials, and none there with a short
//! secret.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use super::ctx::Ctx;
use super::doc::KeyPath;

/// The shortest token or password accepted off loopback, where anyone on the network may guess: 16
/// characters of `openssl rand -hex 8`, at the least.
const MIN_SECRET_OFF_LOOPBACK: usize = 16;

pub(super) fn check_dashboard(ctx: &mut Ctx) {
    let init = &ctx.rec.config.init;
    let path = KeyPath::root().key("init");
    let (user, password, token) = (
        init.dashboard_user.clone(),
        init.dashboard_password.clone(),
        init.dashboard_token.clone(),
    );
    for (key, value) in [
        ("dashboard_user", &user),
        ("dashboard_password", &password),
        ("dashboard_token", &token),
    ] {
        match value.as_deref() {
            Some("") => ctx.at_value(&path.key(key), format!("{key} must not be empty")),
            Some(_) if init.dashboard.is_none() => ctx.at_key(
                &path.key(key),
                format!("{key} has no effect without `dashboard = \"127.0.0.1:9001\"`"),
            ),
            _ => {}
        }
    }
    if let Some(user) = &user {
        if user.contains(':') {
            ctx.at_value(
                &path.key("dashboard_user"),
                "dashboard_user must not contain ':' (basic auth separates user and password with it)",
            );
        }
    }
    match (&user, &password) {
        (Some(_), None) => ctx.at_key(
            &path.key("dashboard_user"),
            "dashboard_user needs dashboard_password too",
        ),
        (None, Some(_)) => ctx.at_key(
            &path.key("dashboard_password"),
            "dashboard_password needs dashboard_user too",
        ),
        _ => {}
    }
    if init.dashboard_session_lifetime.0.is_zero() {
        ctx.at_value(
            &path.key("dashboard_session_lifetime"),
            "dashboard_session_lifetime must be longer than 0",
        );
    }
    let Some(text) = init.dashboard.clone() else {
        return;
    };
    let key = path.key("dashboard");
    if ctx.dropped(&key) {
        return;
    }
    let addr: SocketAddr = match text.parse() {
        Ok(addr) => addr,
        Err(_) => {
            ctx.at_value(
                &key,
                format!(
                    "invalid dashboard address {text:?}: expected IP:PORT, e.g. \"127.0.0.1:9001\""
                ),
            );
            return;
        }
    };
    if !addr.ip().is_loopback() {
        for (key, secret) in [
            ("dashboard_token", &token),
            ("dashboard_password", &password),
        ] {
            let length = secret.as_deref().map_or(0, |s| s.chars().count());
            if (1..MIN_SECRET_OFF_LOOPBACK).contains(&length) {
                ctx.at_value(
                    &path.key(key),
                    format!(
                        "{key} is {length} characters; a dashboard on {addr} can be reached from the network, \
                         so it needs at least {MIN_SECRET_OFF_LOOPBACK} (e.g. `openssl rand -hex 16`)"
                    ),
                );
            }
        }
    }
    let has_credentials = token.is_some() || (user.is_some() && password.is_some());
    if !addr.ip().is_loopback() && !has_credentials {
        ctx.at_value(
            &key,
            format!(
                "dashboard on non-loopback address {addr} without credentials: set dashboard_token, or \
                 dashboard_user and dashboard_password, or bind 127.0.0.1 and use SSH/SSM port forwarding"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::validate::parse_and_validate;

    fn errors(text: &str) -> Vec<String> {
        match parse_and_validate(Path::new("t.toml"), text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn loopback_without_credentials_is_fine() {
        assert!(errors("[init]\ndashboard = \"127.0.0.1:9001\"\n").is_empty());
        assert!(errors("[init]\ndashboard = \"[::1]:9001\"\n").is_empty());
    }

    #[test]
    fn public_address_needs_credentials() {
        let e = errors("[init]\ndashboard = \"0.0.0.0:9001\"\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("t.toml:2:13: init.dashboard: dashboard on non-loopback address"),
            "{e:#?}"
        );
        let token = "t".repeat(16);
        assert!(errors(&format!(
            "[init]\ndashboard = \"0.0.0.0:9001\"\ndashboard_token = \"{token}\"\n"
        ))
        .is_empty());
        assert!(errors(&format!(
            "[init]\ndashboard = \"0.0.0.0:9001\"\ndashboard_user = \"u\"\ndashboard_password = \"{token}\"\n"
        ))
        .is_empty());
    }

    #[test]
    fn short_secrets_are_refused_off_loopback_only() {
        let e = errors("[init]\ndashboard = \"0.0.0.0:9001\"\ndashboard_token = \"t\"\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("t.toml:3:19: init.dashboard_token: dashboard_token is 1 characters"),
            "{e:#?}"
        );
        let e = errors(
            "[init]\ndashboard = \"[::]:9001\"\ndashboard_user = \"u\"\ndashboard_password = \"short pass\"\n",
        );
        assert!(
            e.iter()
                .any(|e| e
                    .starts_with("t.toml:4:22: init.dashboard_password: dashboard_password is 10")),
            "{e:#?}"
        );
        assert!(
            errors("[init]\ndashboard = \"127.0.0.1:9001\"\ndashboard_token = \"t\"\n").is_empty()
        );
    }

    #[test]
    fn half_a_credential_pair_is_an_error() {
        let e = errors("[init]\ndashboard = \"0.0.0.0:9001\"\ndashboard_user = \"u\"\n");
        assert!(
            e.iter().any(|e| e.starts_with(
                "t.toml:3:1: init.dashboard_user: dashboard_user needs dashboard_password"
            )),
            "{e:#?}"
        );
        assert!(e.iter().any(|e| e.contains("non-loopback")), "{e:#?}");
    }

    #[test]
    fn bad_address_and_stray_keys() {
        let e = errors("[init]\ndashboard = \"localhost\"\n");
        assert!(
            e[0].starts_with("t.toml:2:13: init.dashboard: invalid dashboard address"),
            "{e:#?}"
        );
        let e = errors("[init]\ndashboard_token = \"t\"\n");
        assert!(e[0].contains("has no effect without"), "{e:#?}");
        let e = errors("[init]\ndashboard = \"127.0.0.1:1\"\ndashboard_token = \"\"\n");
        assert!(e[0].contains("must not be empty"), "{e:#?}");
    }
}
