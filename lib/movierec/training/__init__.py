"""Training: one loop, two runners (in-process and Ray Train), tuning and MLflow tracking."""
