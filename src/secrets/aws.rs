//! The two AWS calls secrets need, as the JSON protocol both services speak: SSM `GetParameter` (with
//! decryption) and Secrets Manager `GetSecretValue`, signed with SigV4 by `aws-sigv4`.
//!
//! Errors name the reference and AWS's error type and message, never a value.
#![forbid(unsafe_code)]

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};

use super::http::{exchange, Endpoint};
use super::imds::RoleCredentials;
use crate::config::secrets::SecretRef;

/// A parameter is at most 8 KiB, a secret at most 64 KiB; their JSON envelopes add little.
const MAX_ANSWER: usize = 256 * 1024;
/// Longest part of an AWS error message kept for status and the log.
const MAX_ERROR: usize = 300;

/// Where and as whom the calls go.
pub struct Client {
    pub region: String,
    pub ssm: Endpoint,
    pub secretsmanager: Endpoint,
    pub credentials: RoleCredentials,
}

impl Client {
    /// The value `reference` stands for.
    pub async fn fetch(&self, reference: &SecretRef) -> Result<String, String> {
        match reference {
            SecretRef::Ssm { name } => {
                let answer = self
                    .call(
                        &self.ssm,
                        "ssm",
                        "AmazonSSM.GetParameter",
                        json!({ "Name": name, "WithDecryption": true }),
                    )
                    .await?;
                answer
                    .pointer("/Parameter/Value")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| "the answer has no Parameter.Value".into())
            }
            SecretRef::SecretsManager { id, key } => {
                let answer = self
                    .call(
                        &self.secretsmanager,
                        "secretsmanager",
                        "secretsmanager.GetSecretValue",
                        json!({ "SecretId": id }),
                    )
                    .await?;
                let Some(string) = answer.get("SecretString").and_then(Value::as_str) else {
                    return Err(
                        "the secret has no SecretString (binary secrets are not supported)".into(),
                    );
                };
                match key {
                    None => Ok(string.to_string()),
                    Some(key) => json_key(string, key),
                }
            }
        }
    }

    async fn call(
        &self,
        endpoint: &Endpoint,
        service: &str,
        target: &str,
        body: Value,
    ) -> Result<Value, String> {
        let body = body.to_string();
        // Origin form on the wire; the signature covers the full URL's path and the Host header.
        let mut request = Request::post("/")
            .header("host", endpoint.authority())
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", target)
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| e.to_string())?;
        self.sign(&mut request, &endpoint.url("/"), service, body.as_bytes())?;
        let (status, answer) = exchange(endpoint, request, MAX_ANSWER).await?;
        let answer: Value = serde_json::from_slice(&answer).map_err(|_| {
            // Requests refused before the service (a bad signature, an unknown key) get XML.
            match xml_field(&answer, "Code") {
                Some(code) => format!("{service} answered {status}: {code}"),
                None => format!("{service} answered {status} with a body that is not JSON"),
            }
        })?;
        if status == 200 {
            Ok(answer)
        } else {
            Err(aws_error(service, status, &answer))
        }
    }

    fn sign(
        &self,
        request: &mut Request<Full<Bytes>>,
        url: &str,
        service: &str,
        body: &[u8],
    ) -> Result<(), String> {
        let identity = Credentials::new(
            &self.credentials.access_key_id,
            &self.credentials.secret_access_key,
            Some(self.credentials.token.clone()),
            None,
            "imds",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing: {e}"))?
            .into();
        let headers: Vec<(&str, &str)> = request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let signable = SignableRequest::new(
            request.method().as_str(),
            url,
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| format!("signing: {e}"))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| format!("signing: {e}"))?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

/// One key of a JSON object secret: a string as it is, a number or boolean as its JSON text.
fn json_key(secret: &str, key: &str) -> Result<String, String> {
    let object: Value = serde_json::from_str(secret)
        .map_err(|_| format!("the secret is not JSON, so it has no key {key:?}"))?;
    match object.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(_) => Err(format!("the secret's key {key:?} is not a string")),
        None => Err(format!("the secret has no key {key:?}")),
    }
}

/// The text of the first `<NAME>` element of an XML error, if short and plain.
fn xml_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + text[start..].find('<')?;
    let value = &text[start..end];
    let plain = value.len() <= 64 && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
    plain.then(|| value.to_string())
}

/// AWS's error type and message (`{"__type": "...#ParameterNotFound", "message": "..."}`), shortened.
fn aws_error(service: &str, status: u16, answer: &Value) -> String {
    let kind = answer
        .get("__type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('#').next().unwrap_or(t))
        .unwrap_or("error");
    let message = answer
        .get("message")
        .or_else(|| answer.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut text = format!("{service} answered {status}: {kind}");
    if !message.is_empty() {
        text.push_str(": ");
        text.extend(message.chars().filter(|c| !c.is_control()).take(MAX_ERROR));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys() {
        let s = r#"{"password": "pw", "port": 5432, "nested": {}}"#;
        assert_eq!(json_key(s, "password").unwrap(), "pw");
        assert_eq!(json_key(s, "port").unwrap(), "5432");
        assert!(json_key(s, "nested").is_err());
        let missing = json_key(s, "user").unwrap_err();
        assert!(!missing.contains("pw"), "{missing}");
        let not_json = json_key("hunter2", "k").unwrap_err();
        assert!(!not_json.contains("hunter2"), "{not_json}");
    }

    #[test]
    fn xml_error_codes() {
        let body =
            b"<ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code></Error></Errors>";
        assert_eq!(
            xml_field(body, "Code").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(xml_field(b"<Code>a b</Code>", "Code"), None);
        assert_eq!(xml_field(b"<html>", "Code"), None);
    }

    #[test]
    fn aws_errors_are_short() {
        let answer =
            json!({"__type": "com.amazonaws#ParameterNotFound", "message": "x".repeat(1000)});
        let e = aws_error("ssm", 400, &answer);
        assert!(
            e.starts_with("ssm answered 400: ParameterNotFound: xxx"),
            "{e}"
        );
        assert!(e.len() < 400);
    }
}
