terraform {
  required_version = ">= 1.5.0"

  required_providers {
    openstack = {
      source = "terraform-provider-openstack/openstack"
      # Exact pin: a provider upgrade is a reviewed change, never a side effect of `init`.
      version = "3.3.2"
    }
  }
}
