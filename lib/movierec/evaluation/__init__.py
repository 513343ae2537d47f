"""Evaluation: the papers' sampled protocol, full ranking, beyond-accuracy metrics, reports."""
