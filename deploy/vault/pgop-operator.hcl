# Vault policy of the pgop operator: least privilege.
#
# pgop writes one KV v2 secret per database, below its namespace's prefix: by default
# secret/data/k8s/<namespace>/<name>/db (MysqlDb spec.vaultPath, PgCluster spec.publish.vaultPath);
# an explicit path may be any path below secret/data/k8s/<namespace>/ (pgop.kernel.tenancy and the
# admission policy pgop-tenant-paths keep each namespace to its own). It needs:
#  - data: read (check-and-set needs the current version), create and update (check-and-set writes);
#  - metadata: delete, to remove every version when a database is deleted.
# `+` is exactly one segment: nothing directly under k8s/ without a namespace, nothing outside the
# k8s/ prefix of the "secret" mount, no list (no enumerating namespaces or databases), no destroy,
# undelete, or metadata read/write, no sys/ or auth/ paths.
# An installation that uses only the default paths can narrow both to k8s/+/+/db; a namespaced
# operator (deploy/operator-namespaced.yaml) to k8s/<namespace>/* per watched namespace.
# If you change the mount or the prefix, change both paths below and the MysqlDb vaultPath.

path "secret/data/k8s/+/*" {
  capabilities = ["create", "read", "update"]
}

path "secret/metadata/k8s/+/*" {
  capabilities = ["delete"]
}
