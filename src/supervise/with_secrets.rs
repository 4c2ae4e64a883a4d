//! The one place where a service's `secrets` change how it starts: its command becomes
//! `stackinit secrets-exec PROGRAM -- ARGV...` with the fetch request in `STACKINIT_SECRETS`
//! (see `crate::secrets`). Init itself never fetches anything and never sees a value.
#![forbid(unsafe_code)]

use super::spawn;
use crate::config::secrets::AwsSpec;
use crate::config::{InitSpec, ServiceSpec};
use crate::secrets::{FetchRequest, REQUEST_VAR};

/// What every fetch needs besides the service's own references: `[init.aws]` and the IMDS endpoint.
#[derive(Clone, Debug, Default)]
pub struct SecretsSource {
    pub aws: AwsSpec,
    pub imds_endpoint: String,
}

impl SecretsSource {
    pub fn of(init: &InitSpec) -> SecretsSource {
        SecretsSource {
            aws: init.aws.clone(),
            imds_endpoint: init.imds.endpoint.clone(),
        }
    }
}

/// `cmd` unchanged for a service without secrets; else the same command behind `secrets-exec`.
pub fn wrap<'a>(
    mut cmd: spawn::Command<'a>,
    spec: &ServiceSpec,
    source: &SecretsSource,
) -> Result<spawn::Command<'a>, String> {
    if spec.secrets.is_empty() {
        return Ok(cmd);
    }
    let program = cmd
        .program
        .to_str()
        .ok_or_else(|| format!("secrets: the program path {:?} is not UTF-8", cmd.program))?
        .to_string();
    let request = FetchRequest {
        secrets: spec.secrets.clone(),
        aws: source.aws.clone(),
        imds_endpoint: source.imds_endpoint.clone(),
    };
    let mut argv = vec![
        "stackinit".into(),
        "secrets-exec".into(),
        program,
        "--".into(),
    ];
    argv.append(&mut cmd.argv);
    cmd.argv = argv;
    cmd.program = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    cmd.env.retain(|(k, _)| k != REQUEST_VAR);
    cmd.env.push((REQUEST_VAR.into(), request.to_json().into()));
    Ok(cmd)
}
