"""Reliability: fault scenarios measured against the real platform (see ``faults``)."""
