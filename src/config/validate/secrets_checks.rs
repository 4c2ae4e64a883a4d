//! `service.X.secrets` and `[init.aws]`: well-formed references, variable names, endpoints (see
//! `config::secrets`). Messages name the reference, never a value: there is none in the config.
#![forbid(unsafe_code)]

use super::ctx::{check_max_duration, Ctx};
use super::doc::KeyPath;
use crate::config::secrets::{self, SecretRef, MAX_SECRETS};

pub(super) fn check_secrets(ctx: &mut Ctx) {
    let rec = ctx.rec;
    for (name, spec) in &rec.config.service {
        let path = Ctx::service_path(name).key("secrets");
        if spec.secrets.len() > MAX_SECRETS {
            ctx.at_value(
                &path,
                format!(
                    "{} secrets: at most {MAX_SECRETS} per service",
                    spec.secrets.len()
                ),
            );
        }
        for (var, reference) in &spec.secrets {
            let key = path.key(var);
            if let Err(e) = secrets::check_variable(var) {
                ctx.at_key(&key, e);
            } else if spec.environment.contains_key(var) {
                ctx.at_key(
                    &key,
                    format!("{var} is also set in environment: a variable comes from one of them"),
                );
            }
            if let Err(e) = SecretRef::parse(reference) {
                ctx.at_value(&key, format!("{reference:?}: {e}"));
            }
        }
    }
    check_aws(ctx);
}

fn check_aws(ctx: &mut Ctx) {
    let aws = &ctx.rec.config.init.aws;
    let path = KeyPath::root().key("init").key("aws");
    if let Some(region) = &aws.region {
        if let Err(e) = secrets::check_region(region) {
            ctx.at_value(&path.key("region"), e);
        }
    }
    for (key, url) in [
        ("ssm_endpoint", &aws.ssm_endpoint),
        ("secretsmanager_endpoint", &aws.secretsmanager_endpoint),
    ] {
        if let Some(url) = url {
            if let Err(e) = secrets::check_endpoint(url) {
                ctx.at_value(&path.key(key), e);
            }
        }
    }
    check_max_duration(ctx, &path.key("timeout"), aws.timeout);
    if aws.timeout.0.is_zero() {
        ctx.at_value(&path.key("timeout"), "timeout must be more than 0");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn errors(text: &str) -> Vec<String> {
        match super::super::parse_and_validate(Path::new("t.toml"), text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn good_secrets_pass() {
        let text = "[init.aws]\nregion = \"eu-west-1\"\nssm_endpoint = \"http://127.0.0.1:5000\"\n\
                    [service.app]\ncommand = [\"x\"]\n\
                    secrets = { KEY = \"ssm:/app/key\", DB = \"secretsmanager:prod/db#password\" }\n";
        assert_eq!(errors(text), Vec::<String>::new());
    }

    #[test]
    fn bad_references_are_located() {
        let text = "[service.app]\ncommand = [\"x\"]\nenvironment = { A = \"1\" }\n\
                    secrets = { KEY = \"/app/key\", A = \"ssm:/a\", \"1B\" = \"ssm:/b\" }\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors[0]
                .starts_with("t.toml:4:19: service.app.secrets.KEY: \"/app/key\": a secret is"),
            "{errors:#?}"
        );
        assert!(
            errors[1]
                .starts_with("t.toml:4:31: service.app.secrets.A: A is also set in environment"),
            "{errors:#?}"
        );
        assert!(
            errors[2].starts_with("t.toml:4:45: service.app.secrets.1B: invalid variable name"),
            "{errors:#?}"
        );
    }

    #[test]
    fn bad_aws_settings_are_located() {
        let text = "[init.aws]\nregion = \"x/y\"\nsecretsmanager_endpoint = \"ftp://h\"\ntimeout = \"0s\"\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors[0].starts_with("t.toml:2:10: init.aws.region:"),
            "{errors:#?}"
        );
        assert!(errors[1].starts_with("t.toml:3:27: init.aws.secretsmanager_endpoint:"));
        assert!(errors[2].starts_with("t.toml:4:11: init.aws.timeout:"));
    }
}
