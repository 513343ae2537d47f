"""Monitoring: compare what the service sees with what its model was trained on."""
