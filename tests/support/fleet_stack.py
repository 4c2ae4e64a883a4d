#!/usr/bin/env python3
"""Create cloudformation/fleet.yaml as a stack on a local AWS API emulator (moto's server) and print, as
one JSON object, how its resources are wired, for tests/fleet_template.rs to check. Needs boto3.

    fleet_stack.py ENDPOINT_URL TEMPLATE OVERLAY_FILE

It makes what the template's parameters refer to first: a VPC with two subnets in two zones, an ACM
certificate, and takes an AMI the emulator knows. moto creates no lifecycle hooks from CloudFormation and
has no rolling updates, so those two come from the template as cfn-lint reads it ("template").
"""
import base64
import json
import sys

import boto3
from cfnlint.decode import cfn_yaml


def main(url, template_path, overlay_path):
    kw = dict(endpoint_url=url, region_name="eu-west-1",
              aws_access_key_id="test", aws_secret_access_key="test")
    ec2, cfn = boto3.client("ec2", **kw), boto3.client("cloudformation", **kw)
    asg, elb = boto3.client("autoscaling", **kw), boto3.client("elbv2", **kw)
    iam, acm = boto3.client("iam", **kw), boto3.client("acm", **kw)

    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.1.{i}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for i, zone in enumerate(["eu-west-1a", "eu-west-1b"])
    ]
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    cert = acm.request_certificate(DomainName="app.example.org")["CertificateArn"]
    overlay = open(overlay_path, encoding="utf-8").read()
    params = {
        "ImageId": ami, "VpcId": vpc, "LoadBalancerSubnets": ",".join(subnets),
        "InstanceSubnets": ",".join(subnets), "CertificateArn": cert, "UserDataOverlay": overlay,
    }
    cfn.create_stack(
        StackName="fleet", TemplateBody=open(template_path, encoding="utf-8").read(),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
    )
    stack = cfn.describe_stacks(StackName="fleet")["Stacks"][0]
    res = {r["LogicalResourceId"]: r["PhysicalResourceId"]
           for r in cfn.list_stack_resources(StackName="fleet")["StackResourceSummaries"]}

    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[res["AutoScalingGroup"]])["AutoScalingGroups"][0]
    hooks = asg.describe_lifecycle_hooks(AutoScalingGroupName=res["AutoScalingGroup"])["LifecycleHooks"]
    version = ec2.describe_launch_template_versions(LaunchTemplateId=res["LaunchTemplate"])["LaunchTemplateVersions"][-1]
    data = version["LaunchTemplateData"]
    listeners = elb.describe_listeners(LoadBalancerArn=res["LoadBalancer"])["Listeners"]
    target_group = elb.describe_target_groups(TargetGroupArns=[res["TargetGroup"]])["TargetGroups"][0]
    role = res["InstanceRole"]
    policies = [iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
                for name in iam.list_role_policies(RoleName=role)["PolicyNames"]]
    profile = iam.get_instance_profile(InstanceProfileName=res["InstanceProfile"])["InstanceProfile"]

    print(json.dumps({
        "status": stack["StackStatus"],
        "resources": res,
        "subnets": sorted(subnets),
        "image": ami,
        "certificate": cert,
        "asg": {
            "launch_template": group.get("LaunchTemplate", {}),
            "target_groups": group.get("TargetGroupARNs", []),
            "subnets": sorted(s for s in group.get("VPCZoneIdentifier", "").split(",") if s),
            "health_check_type": group.get("HealthCheckType"),
            "min": group["MinSize"], "max": group["MaxSize"], "desired": group["DesiredCapacity"],
        },
        "hooks": [{k: h.get(k) for k in ("LifecycleTransition", "HeartbeatTimeout", "DefaultResult")} for h in hooks],
        "launch_template": {
            "image": data.get("ImageId"),
            "metadata": data.get("MetadataOptions", {}),
            "user_data": base64.b64decode(data.get("UserData", "")).decode("utf-8"),
            "profile": data.get("IamInstanceProfile", {}),
        },
        "profile": {"arn": profile["Arn"], "roles": [r["RoleName"] for r in profile["Roles"]]},
        "listeners": [{"protocol": l["Protocol"], "port": l["Port"],
                       "certificates": [c["CertificateArn"] for c in l.get("Certificates", [])],
                       "actions": l["DefaultActions"]} for l in listeners],
        "target_group": {k: target_group.get(k) for k in (
            "TargetGroupArn", "HealthCheckPath", "HealthCheckIntervalSeconds", "UnhealthyThresholdCount",
            "HealthyThresholdCount", "HealthCheckTimeoutSeconds", "Port", "Protocol")},
        "policies": policies,
        "template": {
            "hooks": group_template(template_path).get("Properties", {}).get("LifecycleHookSpecificationList", []),
            "update_policy": group_template(template_path).get("UpdatePolicy", {}),
        },
    }, default=str))


def group_template(path):
    return json.loads(json.dumps(cfn_yaml.load(path)["Resources"]["AutoScalingGroup"]))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
