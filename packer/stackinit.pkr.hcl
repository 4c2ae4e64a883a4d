# The golden image: one template, three sources, one install script.
#
#   amazon-ebs.ubuntu  an AMI from a stock Ubuntu AMI (ENA, IMDSv2 required): the binary and the app uploaded,
#                      image/install.sh run over SSH.
#   null.local         the image built offline on this machine: image/build-local.sh debootstraps a minimal
#                      Debian root (cached by its inputs), runs image/install.sh in a chroot, and writes one
#                      bootable disk, var.output_dir/disk.raw (GPT; GRUB for BIOS and UEFI; ext4 root), for QEMU.
#   null.ami           the same disk as null.local, built for AWS (the real IMDS, no test agent) and turned
#                      into an AMI by the amazon-import post-processor (S3 upload + EC2 VM Import).
#
# AWS:    packer build -only=amazon-ebs.ubuntu -var binary=target/x86_64-unknown-linux-musl/release/stackinit packer/
# Import: packer build -only=null.ami -var s3_bucket=BUCKET -var binary=... packer/
# Local:  packer build -only=null.local -var binary=target/debug/stackinit -var output_dir=/tmp/img packer/
# Check:  packer validate packer/   (needs no AWS credentials)
# Plugins: Packer >= 1.7 takes the amazon builder and post-processor from the amazon plugin, declared in
# packer/plugins/ (`packer init packer/plugins/` once). Debian's packer 1.6.6 has them built in and rejects the
# `required_plugins` block, which is why it is not in this directory.

packer {
  required_version = ">= 1.6.6"
}

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "AWS region the AMI is built in."
}

variable "instance_type" {
  type        = string
  default     = "t3.small"
  description = "Builder instance type (any Nitro type: ENA and NVMe)."
}

variable "base_ami_name" {
  type        = string
  default     = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
  description = "Name filter of the base AMI (22.04: ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*)."
}

variable "base_ami_owners" {
  type        = list(string)
  default     = ["099720109477"]
  description = "Owners of the base AMI (Canonical)."
}

variable "ssh_username" {
  type    = string
  default = "ubuntu"
}

variable "ami_name" {
  type        = string
  default     = "stackinit-{{timestamp}}"
  description = "Name of the AMI produced."
}

variable "boot_mode" {
  type        = string
  default     = "pid1"
  description = "pid1 (kernel init= is stackinit), systemd (stackinit.service under systemd), or seed (systemd + nginx + supervisor + gunicorn, for comparison only)."
}

variable "binary" {
  type        = string
  default     = "target/x86_64-unknown-linux-musl/release/stackinit"
  description = "The stackinit binary to bake in (a static musl build runs on every base)."
}

variable "repo_dir" {
  type        = string
  default     = "."
  description = "The stackinit checkout (image/, app/, systemd/ come from here). Relative to where packer runs."
}

variable "app_dir" {
  type        = string
  default     = ""
  description = "The WSGI app to bake (default: the repo's sample app/). Its stackinit-app.env names the WSGI callable, Django settings, requirements, package directory and static files (image/app-manifest.sh); its own stackinit.toml, if any, is the image's config."
}

variable "output_dir" {
  type        = string
  default     = ".cache/image/out"
  description = "null.local, null.ami: where disk.raw and image.env are written."
}

variable "cache_dir" {
  type        = string
  default     = ".cache/image"
  description = "null.local: debootstrapped trees and pip downloads, reused while their inputs are unchanged."
}

variable "debian_mirror" {
  type        = string
  default     = ""
  description = "null.local: Debian mirror; empty means the one this machine's apt uses."
}

variable "imds_endpoint" {
  type        = string
  default     = "http://10.0.2.100:80"
  description = "null.local: the IMDS endpoint baked into the local image (QEMU guestfwd puts a fake one there); empty for the default 169.254.169.254. AMIs (amazon-ebs, null.ami) always use the real one."
}

variable "image_size" {
  type        = string
  default     = ""
  description = "null.local, null.ami: size of the root file system (e.g. 2G); empty means the tree's size plus headroom. Instances launched with a bigger volume grow it at their first boot."
}

variable "root_mode" {
  type        = string
  default     = "rw"
  description = "null.local, null.ami: rw, or ro for a root that stays read-only (fstab; writable state on tmpfs)."
}

variable "s3_bucket" {
  type        = string
  default     = ""
  description = "null.ami: the S3 bucket amazon-import uploads disk.raw to (the vmimport service role must read it)."
}

source "amazon-ebs" "ubuntu" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = var.ami_name
  ssh_username  = var.ssh_username

  source_ami_filter {
    filters = {
      name                = var.base_ami_name
      root-device-type    = "ebs"
      virtualization-type = "hvm"
      architecture        = "x86_64"
    }
    owners      = var.base_ami_owners
    most_recent = true
  }

  # The builder's temporary key must not stay in the AMI: under stackinit nothing removes it at boot.
  ssh_clear_authorized_keys = true

  # Instances launched from the AMI get the ENA NIC (ens5) and NVMe disks; install.sh puts ena and nvme
  # into the initramfs because nothing loads modules after boot when stackinit is PID 1.
  ena_support = true

  # IMDSv2: Debian's packer 1.6.6 predates amazon-ebs `metadata_options` / `imds_support`, so the template
  # requires tokens with the AWS CLI instead: on the builder right after launch (below), and on the AMI
  # itself after it is registered (the post-processors), so every instance launched from it is IMDSv2-only.
  # With packer >= 1.7 and the amazon plugin, the equivalent is
  #   metadata_options { http_endpoint = "enabled"  http_tokens = "required"  http_put_response_hop_limit = 1 }
  #   imds_support = "v2.0"

  tags = {
    Name      = var.ami_name
    boot_mode = var.boot_mode
    built_by  = "stackinit packer template"
  }
}

source "null" "local" {
  communicator = "none"
}

source "null" "ami" {
  communicator = "none"
}

build {
  sources = ["source.amazon-ebs.ubuntu", "source.null.local", "source.null.ami"]

  # ---- AMI: IMDSv2 on the builder, upload, then install over SSH ----------------------------------------
  provisioner "shell-local" {
    only = ["amazon-ebs.ubuntu"]
    inline = [
      "aws ec2 modify-instance-metadata-options --region ${var.region} --instance-id ${build.ID} --http-endpoint enabled --http-tokens required --http-put-response-hop-limit 1",
    ]
  }

  # Stage what the image needs (binary, image/, app/, systemd/) in one directory, checked here so a missing
  # binary fails before anything is uploaded; `generated` lets `packer validate` pass before it exists.
  provisioner "shell-local" {
    only = ["amazon-ebs.ubuntu"]
    environment_vars = [
      "STACKINIT_BINARY=${var.binary}",
      "STACKINIT_SRC=${var.repo_dir}",
      "STACKINIT_APP_DIR=${var.app_dir}",
      "STAGE=${var.output_dir}/stage",
    ]
    command = "bash ${var.repo_dir}/image/stage.sh"
  }

  provisioner "file" {
    only        = ["amazon-ebs.ubuntu"]
    generated   = true
    source      = "${var.output_dir}/stage/"
    destination = "/tmp/stackinit-src"
  }

  provisioner "shell" {
    only            = ["amazon-ebs.ubuntu"]
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    environment_vars = [
      "STACKINIT_BOOT_MODE=${var.boot_mode}",
      "STACKINIT_SRC=/tmp/stackinit-src",
    ]
    inline = [
      "bash /tmp/stackinit-src/image/install.sh --src /tmp/stackinit-src --binary /tmp/stackinit-src/stackinit --mode ${var.boot_mode}",
      "rm -rf /tmp/stackinit-src",
    ]
  }

  provisioner "shell-local" {
    only   = ["null.ami"]
    inline = ["[ -n '${var.s3_bucket}' ] || { echo 'null.ami needs -var s3_bucket=BUCKET (amazon-import uploads the disk there)' >&2; exit 1; }"]
  }

  # ---- The disk: debootstrap + chroot install + GPT disk, offline once cached --------------------------
  # null.ami bakes in nothing for tests: the real IMDS.
  provisioner "shell-local" {
    only = ["null.local", "null.ami"]
    environment_vars = [
      "STACKINIT_BOOT_MODE=${var.boot_mode}",
      "STACKINIT_BINARY=${var.binary}",
      "STACKINIT_SRC=${var.repo_dir}",
      "STACKINIT_APP_DIR=${var.app_dir}",
      "IMAGE_OUTPUT_DIR=${var.output_dir}",
      "IMAGE_CACHE_DIR=${var.cache_dir}",
      "IMAGE_MIRROR=${var.debian_mirror}",
      "IMAGE_SIZE=${var.image_size}",
      "IMAGE_ROOT_MODE=${var.root_mode}",
      "STACKINIT_IMDS_ENDPOINT=${source.name == "ami" ? "" : var.imds_endpoint}",
    ]
    command = "bash ${var.repo_dir}/image/build-local.sh"
  }

  # ---- AMI: IMDSv2 required for every instance launched from it -----------------------------------------
  post-processors {
    post-processor "manifest" {
      only       = ["amazon-ebs.ubuntu"]
      output     = "${var.output_dir}/manifest.json"
      strip_path = true
    }
    post-processor "shell-local" {
      only = ["amazon-ebs.ubuntu"]
      environment_vars = [
        "AWS_REGION=${var.region}",
        "MANIFEST=${var.output_dir}/manifest.json",
      ]
      command = "bash ${var.repo_dir}/packer/require-imdsv2.sh"
    }
  }

  # ---- null.ami: the disk becomes an AMI -----------------------------------------------------------------
  # artifice makes disk.raw the build's artifact; amazon-import uploads it to S3 and imports it with EC2 VM
  # Import (the image boots BIOS and UEFI; VM Import registers it for BIOS). Then, as for amazon-ebs, the
  # AMI is made IMDSv2-only.
  post-processors {
    post-processor "artifice" {
      only  = ["null.ami"]
      files = ["${var.output_dir}/disk.raw"]
    }
    post-processor "amazon-import" {
      only   = ["null.ami"]
      region = var.region
      # Packer checks for a bucket name before any build runs; without -var s3_bucket the build stops in its
      # first step. The stand-in is not a valid bucket name (underscore), so it can never be someone's bucket.
      s3_bucket_name  = var.s3_bucket != "" ? var.s3_bucket : "needs-var-s3_bucket"
      s3_key_name     = "stackinit/disk-{{timestamp}}.raw"
      format          = "raw"
      license_type    = "BYOL"
      ami_name        = var.ami_name
      ami_description = "stackinit (${var.boot_mode}) on Debian bookworm"
      tags = {
        Name      = var.ami_name
        boot_mode = var.boot_mode
        built_by  = "stackinit packer template (null.ami)"
      }
    }
    post-processor "manifest" {
      only       = ["null.ami"]
      output     = "${var.output_dir}/manifest.json"
      strip_path = true
    }
    post-processor "shell-local" {
      only = ["null.ami"]
      environment_vars = [
        "AWS_REGION=${var.region}",
        "MANIFEST=${var.output_dir}/manifest.json",
      ]
      command = "bash ${var.repo_dir}/packer/require-imdsv2.sh"
    }
  }
}
