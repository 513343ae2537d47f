# What `movierec infra inventory` reads (terraform output -json) to write the Ansible and
# Kubespray inventories; nothing else needs an address.

output "node_names" {
  description = "Ansible host names of the cluster nodes, in order (node1 is the control plane)"
  value       = keys(local.nodes)
}

output "private_ips" {
  description = "Private address of each node, by host name"
  value       = { for name, port in openstack_networking_port_v2.private : name => port.all_fixed_ips[0] }
}

output "floating_ip" {
  description = "Public address of node1: SSH jump host and ingress entry point"
  value       = openstack_networking_floatingip_v2.node1.address
}

output "platform_volume_device" {
  description = "Device path of the platform data volume on node1"
  value       = openstack_compute_volume_attach_v2.platform.device
}

output "ssh_user" {
  description = "Login user of the Chameleon images"
  value       = "cc"
}
