//! `secrets` end to end: values in moto's Parameter Store and Secrets Manager (on loopback), the instance
//! role's credentials from the fake IMDS, a Python service running as `nobody` that sees the values, and
//! nothing a user can look at (status, the dashboard's data, diff, reload, logs, stackinit's own debug log,
//! the process's argv) that shows them.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use support::aws::{imds_role_values, Moto};
use support::e2e::{shared_dir, FakeImds};
use support::{wait_for, Stack, BIN};

/// Writes the SHA-256 of what it sees (the two secrets and a literal that looks like a reference) to
/// its argument, then waits; it logs variable names only.
const APP: &str = r#"
import hashlib, os, sys, time
seen = "\n".join(os.environ.get(k, "-") for k in ("DJANGO_SECRET_KEY", "DB_PASSWORD", "PLAIN"))
out = sys.argv[1]
with open(out + ".tmp", "w") as f:
    f.write(hashlib.sha256(seen.encode()).hexdigest())
os.replace(out + ".tmp", out)
print("app: started with", sorted(k for k in os.environ if k.isupper())[:50], flush=True)
time.sleep(3600)
"#;

fn sha256(text: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())",
        ])
        .arg(text)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn random_value(tag: &str) -> String {
    let bytes = std::fs::read("/proc/sys/kernel/random/uuid").expect("a uuid");
    format!("{tag}-{}", String::from_utf8_lossy(&bytes).trim())
}

const PUT_PARAMETER: &str = "ssm.put_parameter(Name=args[0], Value=args[1], Type='SecureString', \
                             Overwrite=True)";
const CREATE_SECRET: &str =
    "sm.create_secret(Name=args[0], SecretString=json.dumps({'user': 'app', 'password': args[1]}))";

fn config(moto: &Moto, imds: &FakeImds, shared: &std::path::Path, secrets: &str) -> String {
    format!(
        "[init.imds]\nenabled = true\nendpoint = \"http://127.0.0.1:{imds}\"\n\
         [init.aws]\nssm_endpoint = \"{url}\"\nsecretsmanager_endpoint = \"{url}\"\n\
         [service.app]\ncommand = [\"/usr/bin/python3\", \"{dir}/app.py\", \"{dir}/out/seen\"]\n\
         user = \"nobody\"\n\
         # A literal that looks like a reference stays literal: only `secrets` is fetched.\n\
         environment = {{ PLAIN = \"ssm:/myapp/secret_key\" }}\n\
         secrets = {{ {secrets} }}\n\
         # Retried within the test's time (the default backoff_max is longer).\n\
         backoff_max = \"1s\"\n",
        imds = imds.port,
        url = moto.url(),
        dir = shared.display(),
    )
}

fn app_dir() -> tempfile::TempDir {
    let shared = shared_dir();
    std::fs::write(shared.path().join("app.py"), APP).expect("app.py");
    let out = shared.path().join("out");
    std::fs::create_dir(&out).expect("out dir");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    shared
}

fn seen(shared: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(shared.join("out/seen")).ok()
}

/// Everything a user can see of the stack, as one text.
fn everything_visible(stack: &Stack) -> String {
    let mut text = String::new();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "app"],
        &["diff"],
        &["logs", "app"],
        &["logs", "app", "--stderr"],
    ] {
        let out = stack.cli(args);
        text += &String::from_utf8_lossy(&out.stdout);
        text += &String::from_utf8_lossy(&out.stderr);
    }
    // The dashboard's data: its page reads /v1/status (above) and /v1/facts; and /metrics.
    for path in ["/v1/facts", "/v1/status", "/metrics"] {
        let out = Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(&stack.socket)
            .arg(format!("http://localhost{path}"))
            .output()
            .expect("curl");
        text += &String::from_utf8_lossy(&out.stdout);
    }
    // Every file in the stack's dir: the logs, stackinit's own (debug) log, the config.
    for entry in walk(stack.dir.path()) {
        text += &String::from_utf8_lossy(&std::fs::read(entry).unwrap_or_default());
    }
    if let Some(pid) = stack.pid_of("app") {
        text += &String::from_utf8_lossy(
            &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        );
    }
    text
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.is_file() {
            files.push(path);
        }
    }
    files
}

#[test]
fn secrets_reach_the_app_and_nothing_else_shows_them() {
    let moto = Moto::start();
    let imds = FakeImds::start(&imds_role_values());
    let (key, password) = (random_value("key"), random_value("pw"));
    moto.python(PUT_PARAMETER, &["/myapp/secret_key", &key]);
    moto.python(CREATE_SECRET, &["prod/db", &password]);
    let shared = app_dir();
    let stack = Stack::start(&config(
        &moto,
        &imds,
        shared.path(),
        "DJANGO_SECRET_KEY = \"ssm:/myapp/secret_key\", DB_PASSWORD = \"secretsmanager:prod/db#password\"",
    ));
    let want = sha256(&format!("{key}\n{password}\nssm:/myapp/secret_key"));
    let got = wait_for(
        "the app's view of its secrets",
        Duration::from_secs(30),
        || seen(shared.path()),
    );
    assert_eq!(
        got,
        want,
        "the app did not see the secrets (stackinit: {})",
        stack.stderr()
    );

    // A reload re-reads them: the new value reaches a new process.
    let rotated = random_value("key2");
    moto.python(PUT_PARAMETER, &["/myapp/secret_key", &rotated]);
    let reload = stack.cli(&["reload"]);
    assert!(reload.status.success(), "{reload:?}");
    let want = sha256(&format!("{rotated}\n{password}\nssm:/myapp/secret_key"));
    wait_for(
        "the rotated secret in the app",
        Duration::from_secs(30),
        || (seen(shared.path())? == want).then_some(()),
    );
    stack.wait_state("app", "running", Duration::from_secs(10));

    let visible = everything_visible(&stack);
    assert!(
        visible.contains("ssm:/myapp/secret_key"),
        "the check saw nothing"
    );
    for value in [&key, &password, &rotated] {
        assert!(
            !visible.contains(value.as_str()),
            "a secret value is visible to users:\n{visible}"
        );
    }
}

#[test]
fn a_failed_fetch_keeps_the_service_down_with_the_reason_and_is_retried() {
    let moto = Moto::start();
    let imds = FakeImds::start(&imds_role_values());
    let shared = app_dir();
    let stack = Stack::start(&config(
        &moto,
        &imds,
        shared.path(),
        "DJANGO_SECRET_KEY = \"ssm:/myapp/missing\"",
    ));
    let reason = wait_for("the fetch error in status", Duration::from_secs(30), || {
        let unit = stack.unit("app");
        let text = unit["status_text"].as_str()?.to_string();
        text.contains("ParameterNotFound").then_some(text)
    });
    assert!(
        reason.contains("DJANGO_SECRET_KEY") && reason.contains("ssm:/myapp/missing"),
        "{reason}"
    );
    assert!(
        seen(shared.path()).is_none(),
        "the app ran without its secret"
    );
    let log = String::from_utf8_lossy(&stack.cli(&["logs", "app", "--stderr"]).stdout).into_owned();
    assert!(log.contains("ParameterNotFound"), "{log}");

    // Never given up: once the parameter exists, a later retry starts the app.
    let key = random_value("late");
    moto.python(PUT_PARAMETER, &["/myapp/missing", &key]);
    let want = sha256(&format!("{key}\n-\nssm:/myapp/secret_key"));
    let got = wait_for("the app after the retry", Duration::from_secs(30), || {
        seen(shared.path())
    });
    assert_eq!(got, want);
}

#[test]
fn check_locates_a_bad_reference() {
    let dir = support::temp_dir("stackinit-secrets-check");
    let path = dir.path().join("stackinit.toml");
    std::fs::write(
        &path,
        "[service.app]\ncommand = [\"x\"]\nsecrets = { KEY = \"vault:/a\" }\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:3:19: service.app.secrets.KEY: \"vault:/a\": a secret is",
        path.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
}

/// The emulator's four free requests: a role for EC2 that may read parameters, its session (the
/// temporary credentials IMDS would serve), and the parameter. Prints the credentials document.
const ROLE_AND_PARAMETER: &str = r#"
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
         "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
iam = boto3.client('iam', **kw)
arn = iam.create_role(RoleName='web-role', AssumeRolePolicyDocument=json.dumps(trust))['Role']['Arn']
read = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": "*"}]}
iam.put_role_policy(RoleName='web-role', PolicyName='read', PolicyDocument=json.dumps(read))
c = boto3.client('sts', **kw).assume_role(RoleArn=arn, RoleSessionName='i-0123456789abcdef0')['Credentials']
ssm.put_parameter(Name='/myapp/secret_key', Value=args[0], Type='SecureString')
print(json.dumps({"Code": "Success", "AccessKeyId": c['AccessKeyId'],
                  "SecretAccessKey": c['SecretAccessKey'], "Token": c['SessionToken']}))
"#;

#[test]
fn requests_are_signed_with_the_role_session_and_checked_by_the_emulator() {
    let moto = Moto::start_checking_after(Some(4));
    let key = random_value("signed");
    let credentials = moto.python(ROLE_AND_PARAMETER, &[&key]);
    let credentials = credentials.trim();
    let forged = credentials.replacen("\"SecretAccessKey\": \"", "\"SecretAccessKey\": \"x", 1);

    // A forged secret key: moto refuses the signature, and status says so.
    let imds = FakeImds::start(&[
        ("placement/region", "eu-west-1"),
        ("iam/security-credentials/", "web-role"),
        ("iam/security-credentials/web-role", &forged),
    ]);
    let shared = app_dir();
    let stack = Stack::start(&config(
        &moto,
        &imds,
        shared.path(),
        "DJANGO_SECRET_KEY = \"ssm:/myapp/secret_key\"",
    ));
    wait_for(
        "the refused signature in status",
        Duration::from_secs(30),
        || {
            let text = stack.unit("app")["status_text"].as_str()?.to_string();
            text.contains("SignatureDoesNotMatch").then_some(())
        },
    );
    drop(stack);

    // The role's real session: signed by aws-sigv4 with the session token, accepted, and the app sees it.
    let imds = FakeImds::start(&[
        ("placement/region", "eu-west-1"),
        ("iam/security-credentials/", "web-role"),
        ("iam/security-credentials/web-role", credentials),
    ]);
    let _stack = Stack::start(&config(
        &moto,
        &imds,
        shared.path(),
        "DJANGO_SECRET_KEY = \"ssm:/myapp/secret_key\"",
    ));
    let want = sha256(&format!("{key}\n-\nssm:/myapp/secret_key"));
    let got = wait_for(
        "the app with the signed fetch",
        Duration::from_secs(30),
        || seen(shared.path()),
    );
    assert_eq!(got, want);
}
