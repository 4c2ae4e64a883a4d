# The plugins packer/stackinit.pkr.hcl uses, for Packer >= 1.7, where the amazon-ebs builder and the
# amazon-import post-processor come from the amazon plugin:
#
#   packer init packer/plugins/    # once per machine: downloads and verifies the plugin
#   packer build -only=... packer/
#
# Kept apart from the template because Debian's packer 1.6.6 (the one the tests run) has these components
# built in and rejects a `required_plugins` block. null, artifice, manifest and shell-local are Packer's own.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
