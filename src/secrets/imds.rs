//! The instance role's temporary credentials and the instance's region, from IMDSv2: a token, then
//! `iam/security-credentials/` (the role's name), then `iam/security-credentials/ROLE`.
#![forbid(unsafe_code)]

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde::Deserialize;

use super::http::{exchange, Endpoint};

/// IMDS answers are small; a credentials document is well under 2 KiB.
const MAX_ANSWER: usize = 16 * 1024;

pub struct Imds {
    endpoint: Endpoint,
    token: String,
}

/// Temporary credentials, as IMDS gives them (Debug prints no key).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RoleCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
}

impl std::fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RoleCredentials({})", self.access_key_id)
    }
}

impl Imds {
    pub async fn connect(url: &str) -> Result<Imds, String> {
        let endpoint = Endpoint::parse(url)?;
        let request = Request::put("/latest/api/token")
            .header("host", endpoint.authority())
            .header("x-aws-ec2-metadata-token-ttl-seconds", "300")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, token) = exchange(&endpoint, request, MAX_ANSWER).await?;
        let token = String::from_utf8_lossy(&token).trim().to_string();
        if status != 200 || token.is_empty() {
            return Err(format!("IMDS token request answered {status}"));
        }
        Ok(Imds { endpoint, token })
    }

    async fn get(&self, key: &str) -> Result<String, String> {
        let request = Request::get(format!("/latest/meta-data/{key}"))
            .header("host", self.endpoint.authority())
            .header("x-aws-ec2-metadata-token", &self.token)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        match exchange(&self.endpoint, request, MAX_ANSWER).await? {
            (200, body) => Ok(String::from_utf8_lossy(&body).trim().to_string()),
            (404, _) if key.starts_with("iam/") => Err(
                "IMDS has no instance role credentials: does the instance have an instance profile?"
                    .into(),
            ),
            (status, _) => Err(format!("IMDS answered {status} for {key}")),
        }
    }

    pub async fn region(&self) -> Result<String, String> {
        let region = self.get("placement/region").await?;
        crate::config::secrets::check_region(&region)?;
        Ok(region)
    }

    pub async fn role_credentials(&self) -> Result<RoleCredentials, String> {
        let roles = self.get("iam/security-credentials/").await?;
        let role = roles
            .lines()
            .next()
            .map(str::trim)
            .filter(|r| !r.is_empty() && !r.contains('/'))
            .ok_or("IMDS lists no instance role")?
            .to_string();
        let document = self
            .get(&format!("iam/security-credentials/{role}"))
            .await?;
        serde_json::from_str(&document)
            .map_err(|e| format!("IMDS credentials of role {role} are unreadable: {e}"))
    }
}
