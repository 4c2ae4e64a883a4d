#!/usr/bin/env bash
# Post-processor of the amazon-ebs build: mark the new AMI IMDSv2-only, so instances launched from it get
# http_tokens=required by default. (Debian's packer 1.6.6 has no `imds_support` option; this is the same API
# call.) Reads the AMI id from packer's manifest ("region:ami-id" in the last build's artifact_id).
set -euo pipefail
: "${MANIFEST:?}" "${AWS_REGION:?}"
artifact=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["builds"][-1]["artifact_id"])' "$MANIFEST")
for pair in ${artifact//,/ }; do
    region=${pair%%:*}
    ami=${pair#*:}
    echo "require-imdsv2: $ami in $region"
    aws ec2 modify-image-attribute --region "$region" --image-id "$ami" --imds-support v2.0
done
