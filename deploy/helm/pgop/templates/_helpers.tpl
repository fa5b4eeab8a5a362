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

{{/* The rules of a ClusterRole or Role of deploy/operator.yaml or operator-namespaced.yaml (links
     in files/ to the files themselves), where each verb has its
     reason: one list of permissions for the three ways to install.
     Called with (list $ "files/operator.yaml" "ClusterRole" "pgop-operator"). */}}
{{- define "pgop.rules" -}}
{{- $root := index . 0 }}{{ $file := index . 1 }}{{ $kind := index . 2 }}{{ $name := index . 3 }}
{{- $found := list }}
{{- range $doc := splitList "\n---\n" ($root.Files.Get $file) }}
{{- $object := fromYaml $doc }}
{{- if and (eq (toString $object.kind) $kind) (eq (toString ($object.metadata).name) $name) }}
{{- $found = append $found $object.rules }}
{{- end }}
{{- end }}
{{- if ne (len $found) 1 }}
{{- fail (printf "%s: no single %s %s" $file $kind $name) }}
{{- end }}
{{- toYaml (first $found) }}
{{- end -}}
