//! `secrets`: environment variables whose values come from AWS at each start, not from the config.
//!
//! ```toml
//! [service.app]
//! secrets = { DJANGO_SECRET_KEY = "ssm:/myapp/secret_key", DB_PASSWORD = "secretsmanager:prod/db#password" }
//!
//! [init.aws]                 # all optional
//! region = "eu-west-1"       # default: the instance's region, from IMDS
//! ```
//!
//! A reference is `ssm:NAME` (a Parameter Store parameter, decrypted) or `secretsmanager:ID` (a secret's
//! string), with `#KEY` to take one key of a JSON secret. They live in their own key so that a literal
//! `environment` value is never read as a reference. The fetching is `crate::secrets`; this module only
//! says what a reference means and whether it is well formed.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::units::Secs;

/// Most secrets one service may name: each is a request at every start.
pub const MAX_SECRETS: usize = 64;
/// AWS's limit on parameter names and secret ids (ARNs included).
const MAX_NAME: usize = 2048;
const MAX_KEY: usize = 256;

/// `[init.aws]`: where secrets are fetched from. Credentials are always the instance role's, from IMDS
/// (`[init.imds] endpoint`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsSpec {
    /// The region of the APIs; unset: the instance's own (IMDS `placement/region`).
    pub region: Option<String>,
    /// Parameter Store's endpoint; unset: `https://ssm.REGION.amazonaws.com`. For VPC endpoints and
    /// emulators.
    pub ssm_endpoint: Option<String>,
    /// Secrets Manager's endpoint; unset: `https://secretsmanager.REGION.amazonaws.com`.
    pub secretsmanager_endpoint: Option<String>,
    /// How long fetching all of a service's secrets may take before that start fails (and is retried
    /// with the service's backoff).
    pub timeout: Secs,
}

impl Default for AwsSpec {
    fn default() -> Self {
        AwsSpec {
            region: None,
            ssm_endpoint: None,
            secretsmanager_endpoint: None,
            timeout: Secs::from_secs(10),
        }
    }
}

/// What one `secrets` value refers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SecretRef {
    /// A Parameter Store parameter, read with decryption.
    Ssm { name: String },
    /// A Secrets Manager secret's string; with `key`, one key of the JSON object it holds.
    SecretsManager { id: String, key: Option<String> },
}

impl SecretRef {
    pub fn parse(text: &str) -> Result<SecretRef, String> {
        if let Some(name) = text.strip_prefix("ssm:") {
            check_name(name, "parameter name")?;
            Ok(SecretRef::Ssm { name: name.into() })
        } else if let Some(rest) = text.strip_prefix("secretsmanager:") {
            let (id, key) = match rest.split_once('#') {
                Some((id, key)) => (id, Some(key)),
                None => (rest, None),
            };
            check_name(id, "secret id")?;
            if let Some(key) = key {
                if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
                    return Err(format!(
                        "the key after '#' must be 1 to {MAX_KEY} characters, without control characters"
                    ));
                }
            }
            Ok(SecretRef::SecretsManager {
                id: id.into(),
                key: key.map(Into::into),
            })
        } else {
            Err("a secret is \"ssm:NAME\" or \"secretsmanager:ID\" (with \"#KEY\" for one key of a JSON secret)".into())
        }
    }
}

/// Parameter names and secret ids (or their ARNs), as AWS allows them.
fn check_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("the {what} must be 1 to {MAX_NAME} characters"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "/_.-+=@:".contains(c);
    match name.chars().find(|c| !allowed(*c)) {
        Some(bad) => Err(format!(
            "{bad:?} is not allowed in a {what} (letters, digits and /_.-+=@: are)"
        )),
        None => Ok(()),
    }
}

/// Variables a service may not take from a secret: what stackinit itself sets for the child.
const RESERVED: [&str; 6] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "PATH",
];

/// Whether `name` can be a secret's variable: a shell-style name that stackinit does not set itself.
pub fn check_variable(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let shell_like = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !shell_like {
        return Err(format!(
            "invalid variable name {name:?}: use letters, digits and '_', not starting with a digit"
        ));
    }
    if RESERVED.contains(&name) || name.starts_with("STACKINIT_") {
        return Err(format!("{name} is set by stackinit itself"));
    }
    Ok(())
}

/// Whether an endpoint is a URL the fetcher can use: `http://` or `https://`, a host, no path.
pub fn check_endpoint(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("endpoint {url:?} must start with https:// or http://"))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '?', '#', '@']) || host.contains(char::is_whitespace)
    {
        return Err(format!(
            "endpoint {url:?} must be SCHEME://HOST[:PORT], without a path"
        ));
    }
    Ok(())
}

/// Whether a region looks like one (`eu-west-1`, `us-gov-west-1`): it becomes part of a host name.
pub fn check_region(region: &str) -> Result<(), String> {
    let ok = !region.is_empty()
        && region.len() <= 32
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "region {region:?} is not a region name (like \"eu-west-1\")"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        assert_eq!(
            SecretRef::parse("ssm:/myapp/secret_key"),
            Ok(SecretRef::Ssm {
                name: "/myapp/secret_key".into()
            })
        );
        assert_eq!(
            SecretRef::parse("secretsmanager:prod/db#password"),
            Ok(SecretRef::SecretsManager {
                id: "prod/db".into(),
                key: Some("password".into())
            })
        );
        assert_eq!(
            SecretRef::parse("secretsmanager:arn:aws:secretsmanager:eu-west-1:1:secret:x-AbC"),
            Ok(SecretRef::SecretsManager {
                id: "arn:aws:secretsmanager:eu-west-1:1:secret:x-AbC".into(),
                key: None
            })
        );
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "/myapp/key",
            "ssm:",
            "ssm:/a b",
            "s3:bucket/key",
            "secretsmanager:",
            "secretsmanager:x#",
            "secretsmanager:#k",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn variables_and_endpoints() {
        assert!(check_variable("DB_PASSWORD").is_ok());
        assert!(check_variable("1X").is_err());
        assert!(check_variable("A-B").is_err());
        assert!(check_variable("LISTEN_FDS").is_err());
        assert!(check_variable("STACKINIT_X").is_err());
        assert!(check_endpoint("http://127.0.0.1:5000").is_ok());
        assert!(check_endpoint("https://ssm.eu-west-1.amazonaws.com/").is_ok());
        assert!(check_endpoint("ftp://x").is_err());
        assert!(check_endpoint("https://x/path").is_err());
        assert!(check_region("eu-west-1").is_ok());
        assert!(check_region("eu-west-1.evil.com/").is_err());
    }
}
