//! Fetching a service's `secrets` (see `config::secrets`) in the service's own process, never in init.
//!
//! When a service has secrets, init starts it as `stackinit secrets-exec PROGRAM -- ARGV...` (its user,
//! its limits, its sockets, its pid: everything else as usual) with the request in `STACKINIT_SECRETS`.
//! That process takes the instance role's credentials from IMDS, fetches each value, adds it to its
//! environment and execs the real program in its place, so the values go from AWS to the service and
//! nowhere else: no pipe, no log, no status. The whole fetch is bounded in time (`[init.aws] timeout`)
//! and each answer in size. A failed fetch says which reference failed and why on stderr (the service's
//! log) and in its STATUS= (`stackinit status`), and exits 75 (EX_TEMPFAIL); the service's restart
//! policy and backoff retry it, for ever by default.
#![forbid(unsafe_code)]

mod aws;
mod http;
mod imds;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::secrets::{AwsSpec, SecretRef};

/// The variable that carries the request from init to `secrets-exec` (removed before the exec).
pub const REQUEST_VAR: &str = "STACKINIT_SECRETS";
/// The exit status of a failed fetch: EX_TEMPFAIL, try again later.
pub const EXIT_FETCH_FAILED: u8 = 75;

/// What to fetch and from where: built by init at spawn time, read by `secrets-exec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Variable name -> reference (`ssm:...`, `secretsmanager:...`).
    pub secrets: BTreeMap<String, String>,
    pub aws: AwsSpec,
    pub imds_endpoint: String,
}

impl FetchRequest {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `stackinit secrets-exec PROGRAM -- ARGV...`: fetch, then become PROGRAM. Returns only on failure.
pub fn exec_main(program: &Path, argv: &[OsString]) -> ExitCode {
    let values = match fetch_from_environment() {
        Ok(values) => values,
        Err(why) => return fail(&why),
    };
    let Some((arg0, args)) = argv.split_first() else {
        return fail("no command to run");
    };
    let error = std::process::Command::new(program)
        .arg0(arg0)
        .args(args)
        .env_remove(REQUEST_VAR)
        .envs(values)
        .exec();
    eprintln!(
        "stackinit secrets-exec: cannot run {}: {error}",
        program.display()
    );
    ExitCode::from(127)
}

fn fail(why: &str) -> ExitCode {
    let line = format!("secrets: {why}");
    eprintln!("stackinit secrets-exec: {line}");
    // STATUS= shows in `stackinit status` while the service waits to be tried again.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
    // The datagram and our exit reach init's loop on different paths: give the message a head start, so
    // it is read while this pid is still the service's (init drops messages from pids it does not know).
    std::thread::sleep(Duration::from_millis(250));
    ExitCode::from(EXIT_FETCH_FAILED)
}

fn fetch_from_environment() -> Result<Vec<(String, String)>, String> {
    let request = std::env::var(REQUEST_VAR).map_err(|_| format!("{REQUEST_VAR} is not set"))?;
    let request: FetchRequest =
        serde_json::from_str(&request).map_err(|e| format!("bad {REQUEST_VAR}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let timeout: Duration = request.aws.timeout.0;
    let result = runtime.block_on(async {
        tokio::time::timeout(timeout, fetch_all(&request))
            .await
            .unwrap_or_else(|_| Err(format!("fetching took longer than {timeout:?}")))
    });
    // Name lookups may still hold a blocking thread: do not wait for it before the exec.
    runtime.shutdown_background();
    result
}

async fn fetch_all(request: &FetchRequest) -> Result<Vec<(String, String)>, String> {
    let imds = imds::Imds::connect(&request.imds_endpoint)
        .await
        .map_err(|e| format!("instance credentials: {e}"))?;
    let region = match &request.aws.region {
        Some(region) => region.clone(),
        None => imds
            .region()
            .await
            .map_err(|e| format!("region (set [init.aws] region): {e}"))?,
    };
    let credentials = imds
        .role_credentials()
        .await
        .map_err(|e| format!("instance credentials: {e}"))?;
    let endpoint = |configured: &Option<String>, service: &str| {
        let url = configured
            .clone()
            .unwrap_or_else(|| format!("https://{service}.{region}.amazonaws.com"));
        http::Endpoint::parse(&url)
    };
    let client = aws::Client {
        ssm: endpoint(&request.aws.ssm_endpoint, "ssm")?,
        secretsmanager: endpoint(&request.aws.secretsmanager_endpoint, "secretsmanager")?,
        region,
        credentials,
    };
    let mut values = Vec::with_capacity(request.secrets.len());
    for (var, text) in &request.secrets {
        let reference = SecretRef::parse(text).map_err(|e| format!("{var}: {e}"))?;
        let value = client
            .fetch(&reference)
            .await
            .map_err(|e| format!("cannot fetch {var} ({text}): {e}"))?;
        if value.contains('\0') {
            return Err(format!("{var} ({text}): the value contains a NUL byte"));
        }
        values.push((var.clone(), value));
    }
    Ok(values)
}
