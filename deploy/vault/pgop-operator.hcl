# Vault policy of the pgop operator: least privilege.
#
# pgop writes one KV v2 secret per database under secret/k8s/<namespace>/<name>/db (the default
# spec.vaultPath / spec.publish.vaultPath is secret/data/k8s/<namespace>/<name>/db). It needs:
#  - data: read (CAS needs the current version), create and update (check-and-set writes);
#  - metadata: delete, to remove every version when a database is deleted.
# Nothing outside the k8s/ prefix of the "secret" KV v2 mount, no list, no sys/ paths.
# If you change the mount or the prefix, change both paths below and the MysqlDb vaultPath.

path "secret/data/k8s/*" {
  capabilities = ["create", "read", "update"]
}

path "secret/metadata/k8s/*" {
  capabilities = ["delete"]
}
