"""Pure manifest builders: a PgCluster or PgInstance in, Kubernetes object dicts out.

Like CloudNativePG's pkg/specs: no API calls here, so every manifest is tested without a cluster.
"""
