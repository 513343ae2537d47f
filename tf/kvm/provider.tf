# Credentials come from the `openstack` entry of a clouds.yaml (Chameleon: "Identity > Application
# Credentials > Download clouds.yaml"), looked up in the usual places (./, ~/.config/openstack/,
# /etc/openstack/). clouds.yaml is git-ignored and never committed.
provider "openstack" {
  cloud = "openstack"
}
