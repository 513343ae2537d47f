# Existing resources of the KVM@TACC project, looked up by name (never by hard-coded id).
data "openstack_networking_network_v2" "shared" {
  name = var.shared_network
}

data "openstack_images_image_v2" "node" {
  name        = var.image
  most_recent = true
}
