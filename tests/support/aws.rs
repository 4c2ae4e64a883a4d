//! A local AWS API emulator: moto's server (PyPI `moto[server]`) on a free loopback port, from the venv
//! scripts/test makes (`$STACKINIT_TEST_AWS_VENV`, else `.cache/aws-venv`), and that venv's Python with
//! boto3 for the test's own calls. No venv means the test fails: run scripts/test once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{free_port, repo, wait_for_port, Guarded};

/// The venv with moto, boto3 and cfn-lint.
pub fn venv() -> PathBuf {
    let venv = std::env::var_os("STACKINIT_TEST_AWS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/aws-venv"));
    assert!(
        venv.join("bin/moto_server").exists(),
        "no moto in {}: run scripts/test (it makes the venv from tests/aws-requirements.txt)",
        venv.display()
    );
    venv
}

/// moto's server on 127.0.0.1, killed when this drops.
pub struct Moto {
    pub port: u16,
    _child: Guarded,
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_checking_after(None)
    }

    /// With moto's IAM checks on after the first `free` requests (its INITIAL_NO_AUTH_ACTION_COUNT):
    /// from then on every request must be signed by known credentials and allowed by their policies.
    pub fn start_checking_after(free: Option<u32>) -> Moto {
        let port = free_port();
        let mut command = Command::new(venv().join("bin/moto_server"));
        if let Some(free) = free {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", free.to_string());
        }
        let child = Guarded::spawn(
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "moto_server",
        );
        wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)));
        Moto {
            port,
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Run `script` with boto3 against this emulator: `ssm`, `sm` (Secrets Manager), `cfn` and `region`
    /// are defined, and `args` is `sys.argv[1:]`. Its stdout; a failure fails the test.
    pub fn python(&self, script: &str, args: &[&str]) -> String {
        let prelude = format!(
            "import sys, json, boto3\nregion = 'eu-west-1'\n\
             kw = dict(endpoint_url='{url}', region_name=region, aws_access_key_id='test', \
             aws_secret_access_key='test')\n\
             ssm = boto3.client('ssm', **kw)\nsm = boto3.client('secretsmanager', **kw)\n\
             cfn = boto3.client('cloudformation', **kw)\nargs = sys.argv[1:]\n",
            url = self.url()
        );
        let output = Command::new(venv().join("bin/python"))
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .args(args)
            .output()
            .expect("run the venv's python");
        assert!(
            output.status.success(),
            "boto3 script failed:\n{script}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The fake IMDS values of an instance with a role in eu-west-1 (credentials are moto's test ones).
pub fn imds_role_values() -> Vec<(&'static str, &'static str)> {
    vec![
        ("placement/region", "eu-west-1"),
        ("iam/security-credentials/", "web-role"),
        (
            "iam/security-credentials/web-role",
            r#"{"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIATESTTESTTEST", "SecretAccessKey": "test-secret-access-key", "Token": "test-session-token", "Expiration": "2099-01-01T00:00:00Z"}"#,
        ),
    ]
}
