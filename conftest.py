# Fixtures for the real components (Kubernetes, S3, Vault, Consul, moto, PostgreSQL).
pytest_plugins = ["e2e.harness.fixtures"]
