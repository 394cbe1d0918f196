{{/* The etcd cluster's name; the parent chart derives its endpoint from the same formula. */}}
{{- define "etcd.fullname" -}}
{{- printf "%s-etcd" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the headless Service that gives members stable DNS names. */}}
{{- define "etcd.peerService" -}}
{{- printf "%s-peer" (include "etcd.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}

{{- define "etcd.selectorLabels" -}}
app.kubernetes.io/name: etcd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "etcd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | trunc 63 | trimSuffix "-" }}
{{ include "etcd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: medallion
{{- end }}

{{/* --initial-cluster: every member by its stable DNS name. */}}
{{- define "etcd.initialCluster" -}}
{{- $members := list }}
{{- range $i := until (int .Values.replicas) }}
{{- $name := printf "%s-%d" (include "etcd.fullname" $) $i }}
{{- $members = append $members (printf "%s=%s://%s.%s.%s.svc:%d" $name (include "etcd.scheme" $) $name (include "etcd.peerService" $) $.Release.Namespace (int $.Values.peerPort)) }}
{{- end }}
{{- join "," $members }}
{{- end }}

{{/* http, or https with TLS. */}}
{{- define "etcd.scheme" -}}
{{- ternary "https" "http" .Values.tls.enabled }}
{{- end }}
