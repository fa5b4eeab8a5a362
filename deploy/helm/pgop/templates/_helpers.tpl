{{/* The names are fixed (one pgop per cluster): the Lease, the admission policies and the
     Services' selectors expect them, and a second install fails at once instead of two operators
     fighting. */}}
{{- define "pgop.name" -}}pgop-operator{{- end -}}

{{- define "pgop.labels" -}}
app.kubernetes.io/name: pgop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pgop
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pgop.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "pgop.serviceAccount" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "pgop.name" . }}
{{- end -}}

{{/* What the operator may do inside a namespace it watches: the rules of deploy/operator.yaml's
     ClusterRole without the cluster-scoped reads, each verb with its reason there
     (tests/unit/test_install_manifests.py keeps them equal). */}}
{{- define "pgop.namespacedRules" -}}
- apiGroups: [pgop.io]
  resources: [pgclusters]
  verbs: [get, list, watch, patch]
- apiGroups: [pgop.io]
  resources: [pginstances, pgbackups]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [pgop.io]
  resources: [mysqldbs]
  verbs: [list, watch, patch]
- apiGroups: [pgop.io]
  resources: [pgclusters/status, mysqldbs/status]
  verbs: [patch]
- apiGroups: [pgop.io]
  resources: [pgbackups/status]
  verbs: [get, patch]
- apiGroups: [pgop.io]
  resources: [pginstances/status]
  verbs: [get, patch, update]
- apiGroups: [pgop.io]
  resources: [pgclusters/finalizers, pginstances/finalizers, pgbackups/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [list, create, patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, create, patch]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, create, patch]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, patch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* The cluster-scoped reads: a cordoned primary's node; whether a PVC's StorageClass exists. */}}
{{- define "pgop.clusterReads" -}}
- apiGroups: [""]
  resources: [nodes]
  verbs: [list]
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get]
{{- end -}}
