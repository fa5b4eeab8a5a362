"""Pinned versions of everything the local environment builds or installs.

Bumping a version here changes the cache key, so the next `up` rebuilds just that component.
"""

KUBERNETES = "v1.34.4"
ETCD = "v3.5.35"
COREDNS = "v1.12.4"
VERSITYGW = "v1.8.0"
CONSUL = "v1.20.1"
# OpenBao's main module is refused by the Go module proxy (403 "not available"), so the Vault API
# server is HashiCorp Vault 1.14.x: the last MPL-2.0 release, the code OpenBao was forked from.
VAULT = "v1.13.0"
# Prometheus 3.x is published to the Go module proxy as v0.3XX.Y (Go modules cannot be v3 without a
# /v3 path): the server and promtool that scrape the pods and check pgop's alerting rules.
PROMETHEUS = "v0.316.0"
# Helm 3 (the chart in deploy/helm/pgop): `helm lint`/`helm template` in the unit tests, install and
# upgrade in e2e/test_install.py.
HELM = "v3.22.0"
HELM_KUBE_MINOR = "37"  # its go.mod's k8s.io/client-go v0.37: the Kubernetes 1.37 it renders for
# Optional, built only by `make bench-scale` (never by `up`): simulated nodes for bench/scale.py.
KWOK = "v0.8.0"

DEBIAN_SUITE = "bookworm"
POSTGRES_MAJOR = 15

APT_PACKAGES = [
    "containerd", "runc", "containernetworking-plugins", "podman", "buildah", "debootstrap",
    "iptables", "conntrack", "ethtool", "socat", "iproute2", "openssl", "util-linux", "ebtables",
    "kmod", "postgresql-15", "postgresql-client-15", "ca-certificates", "procps", "curl",
    # what docs/backup-layout.md has a person restore with (e2e/test_restore_by_hand.py)
    "awscli", "zstd",
]
