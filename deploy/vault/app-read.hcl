# Vault policy of one application: read its own database secret, nothing else.
#
# A template: pgop's tests and docs render it per application by replacing NAMESPACE and NAME
# (the MysqlDb or PgCluster the application uses), e.g.
#   sed -e s/NAMESPACE/shop/ -e s/NAME/orders-db/ deploy/vault/app-read.hcl \
#     | vault policy write app-shop-orders-db -
# and bind it to the application's service account with a Kubernetes auth role.

path "secret/data/k8s/NAMESPACE/NAME/db" {
  capabilities = ["read"]
}
