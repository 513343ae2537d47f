"""Infrastructure as code: thin wrappers over terraform, ansible, openstack, ArgoCD and Argo.

Every wrapper can run in dry-run mode, where it prints the exact commands and files it would
use and touches nothing; the offline validation of ``tf/``, ``ansible/``, ``k8s/``,
``workflows/`` and ``docker/`` lives here too, so tests, notebooks and ``make check-infra``
share one implementation.
"""
