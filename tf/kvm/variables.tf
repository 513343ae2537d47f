variable "suffix" {
  description = "Suffix added to every resource name (e.g. your project or user id), so several deployments can share a project"
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9-]{1,20}$", var.suffix))
    error_message = "suffix: 1-20 lowercase letters, digits or dashes."
  }
}

variable "key" {
  description = "Name of the OpenStack key pair installed on every node (already registered in the project)"
  type        = string
  nullable    = false
}

variable "reservation_id" {
  description = "Blazar reservation (flavor) id of the lease for the nodes: on KVM@TACC the reserved flavor's id is the reservation"
  type        = string
  nullable    = false
}

variable "image" {
  description = "Boot image for the cluster nodes"
  type        = string
  default     = "CC-Ubuntu24.04"
}

variable "node_count" {
  description = "Number of cluster nodes; node1 is the control plane and holds the platform volume"
  type        = number
  default     = 3

  validation {
    condition     = contains(range(1, 11), var.node_count)
    error_message = "node_count must be between 1 and 10."
  }
}

variable "volume_size" {
  description = "Size in GiB of the block volume for platform data, attached to node1: every local-path claim (PostgreSQL 10, MinIO 50, Prometheus 20, Grafana 2, registry 30, workflow state 20 = 132 GiB; tests/infra checks the sum fits)"
  type        = number
  default     = 150
}

variable "private_cidr" {
  description = "CIDR of the private cluster network (Kubernetes node traffic and the API server)"
  type        = string
  default     = "192.168.1.0/24"
}

variable "ssh_cidr" {
  description = "Source CIDR allowed to reach SSH (22): the address you connect from, e.g. your Jupyter server's /32"
  type        = string
  nullable    = false
}

variable "shared_network" {
  description = "Existing provider network with external routing, where the floating IP is attached"
  type        = string
  default     = "sharednet1"
}

variable "floating_ip_pool" {
  description = "Pool the floating IP is allocated from"
  type        = string
  default     = "public"
}
