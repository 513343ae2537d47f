"""Registry: verified model bundles and the MLflow registry with aliases and history."""
