//! cloudformation/fleet.yaml: it passes cfn-lint, and created as a stack on moto's server (loopback) its
//! resources are wired as the README says: the Auto Scaling group launches from the launch template
//! (IMDSv2 required, the user-data overlay as given) across both subnets into the target group, the HTTPS
//! listener forwards to it and HTTP redirects to HTTPS, the health check is /healthz and marks a draining
//! instance unhealthy within the image's drain, scale-in waits on a lifecycle hook, a new AMI rolls one
//! instance at a time, and the instance role may read the app's parameters and secrets.

mod support;

use std::process::Command;

use serde_json::Value;
use support::aws::{venv, Moto};
use support::repo;

/// The image's `shutdown_drain` (image/install.sh): how long `/healthz` answers 503 before anything stops.
const IMAGE_DRAIN_SECS: u64 = 25;

fn template() -> std::path::PathBuf {
    repo().join("cloudformation/fleet.yaml")
}

#[test]
fn the_template_passes_cfn_lint() {
    let out = Command::new(venv().join("bin/cfn-lint"))
        .arg(template())
        .output()
        .expect("run cfn-lint");
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn create_stack(overlay: &str) -> Value {
    let moto = Moto::start();
    let dir = support::temp_dir("stackinit-fleet");
    let overlay_path = dir.path().join("overlay.toml");
    std::fs::write(&overlay_path, overlay).expect("overlay");
    let out = Command::new(venv().join("bin/python"))
        .arg(repo().join("tests/support/fleet_stack.py"))
        .arg(moto.url())
        .arg(template())
        .arg(&overlay_path)
        .output()
        .expect("run fleet_stack.py");
    assert!(
        out.status.success(),
        "creating the stack failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fleet_stack.py prints JSON")
}

#[test]
fn the_stack_is_created_on_the_emulator_and_wired_as_documented() {
    let overlay = "[service.app]\nreplicas = 4\nsecrets = { DJANGO_SECRET_KEY = \"ssm:/myapp/secret_key\" }\n";
    let s = create_stack(overlay);
    assert_eq!(s["status"], "CREATE_COMPLETE", "{s:#}");
    let res = &s["resources"];

    // The group launches from the template, in both subnets, into the target group, replacing instances
    // the ALB finds unhealthy.
    let asg = &s["asg"];
    assert_eq!(
        asg["launch_template"]["LaunchTemplateId"],
        res["LaunchTemplate"]
    );
    assert_eq!(
        asg["target_groups"],
        serde_json::json!([res["TargetGroup"]])
    );
    assert_eq!(asg["subnets"], s["subnets"]);
    assert_eq!(asg["health_check_type"], "ELB");
    assert_eq!(
        (asg["min"].as_u64(), asg["desired"].as_u64()),
        (Some(2), Some(2))
    );

    // The launch template: the AMI given, IMDSv2 only, the overlay as user data, the role's profile.
    let lt = &s["launch_template"];
    assert_eq!(lt["image"], s["image"]);
    assert_eq!(lt["metadata"]["HttpTokens"], "required");
    assert_eq!(lt["metadata"]["HttpPutResponseHopLimit"], 1);
    assert_eq!(lt["user_data"], overlay);
    assert_eq!(lt["profile"]["Arn"], s["profile"]["arn"]);
    assert_eq!(
        s["profile"]["roles"],
        serde_json::json!([res["InstanceRole"]])
    );

    // HTTPS forwards to the target group with the certificate given; HTTP redirects to HTTPS.
    let listeners = s["listeners"].as_array().expect("listeners");
    let https = listeners
        .iter()
        .find(|l| l["port"] == 443)
        .expect("an HTTPS listener");
    assert_eq!(https["protocol"], "HTTPS");
    assert_eq!(https["certificates"], serde_json::json!([s["certificate"]]));
    assert_eq!(https["actions"][0]["Type"], "forward");
    assert_eq!(https["actions"][0]["TargetGroupArn"], res["TargetGroup"]);
    let http = listeners
        .iter()
        .find(|l| l["port"] == 80)
        .expect("an HTTP listener");
    assert_eq!(http["actions"][0]["Type"], "redirect");
    assert_eq!(http["actions"][0]["RedirectConfig"]["Protocol"], "HTTPS");
    assert_eq!(
        http["actions"][0]["RedirectConfig"]["StatusCode"],
        "HTTP_301"
    );

    // The health check: /healthz on the proxy's port, failing a draining instance within its drain.
    let tg = &s["target_group"];
    assert_eq!(tg["HealthCheckPath"], "/healthz");
    assert_eq!(
        (tg["Protocol"].as_str(), tg["Port"].as_u64()),
        (Some("HTTP"), Some(80))
    );
    let interval = tg["HealthCheckIntervalSeconds"].as_u64().expect("interval");
    let unhealthy = tg["UnhealthyThresholdCount"].as_u64().expect("threshold");
    assert!(
        interval * unhealthy <= IMAGE_DRAIN_SECS,
        "the ALB takes {interval} s x {unhealthy} to see a drain of {IMAGE_DRAIN_SECS} s"
    );

    // Scale-in waits on a termination hook that goes on by itself; a new AMI rolls one at a time.
    let hooks = s["template"]["hooks"].as_array().expect("hooks");
    assert!(
        hooks.iter().any(
            |h| h["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
                && h["DefaultResult"] == "CONTINUE"
                && h["HeartbeatTimeout"].as_u64() >= Some(interval * unhealthy)
        ),
        "{hooks:?}"
    );
    let rolling = &s["template"]["update_policy"]["AutoScalingRollingUpdate"];
    assert_eq!(rolling["MaxBatchSize"], 1, "{rolling}");
    assert_eq!(rolling["MinInstancesInService"]["Ref"], "DesiredCapacity");

    // The role reads the app's parameters and secrets, and only those.
    let policies = s["policies"].to_string();
    for want in [
        "ssm:GetParameter",
        "parameter/myapp/*",
        "secretsmanager:GetSecretValue",
        "secret:myapp/*",
    ] {
        assert!(policies.contains(want), "{want} not in {policies}");
    }
    assert!(!policies.contains("\"Resource\": \"*\"") && !policies.contains("'Resource': '*'"));
}
