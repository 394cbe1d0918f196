{{/* The chart's name, for the app.kubernetes.io/name label. */}}
{{- define "medallion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, the prefix of every object's name. */}}
{{- define "medallion.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's object name: <fullname>-<component>, within the 63 characters of a label. */}}
{{- define "medallion.componentName" -}}
{{- printf "%s-%s" (include "medallion.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component }}
{{- end }}

{{- define "medallion.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "medallion.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: medallion
{{- end }}

{{- define "medallion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medallion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component's objects; `dict "root" $ "component" "executor"`. */}}
{{- define "medallion.componentLabels" -}}
{{ include "medallion.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector of one component's pods. */}}
{{- define "medallion.componentSelector" -}}
{{ include "medallion.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "medallion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "medallion.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "medallion.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The etcd client endpoints: the vendored subchart's Service, or the external cluster. */}}
{{- define "medallion.etcdEndpoints" -}}
{{- if .Values.etcd.enabled }}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" (eq (include "medallion.etcdTls" .) "true")) (include "medallion.etcdName" .) .Release.Namespace (int (default 2379 .Values.etcd.clientPort)) }}
{{- else }}
{{- required "externalEtcd.endpoints is required when etcd.enabled is false" (join "," .Values.externalEtcd.endpoints) }}
{{- end }}
{{- end }}

{{/* The vendored etcd's name (the subchart's etcd.fullname). */}}
{{- define "medallion.etcdName" -}}
{{- printf "%s-etcd" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The vendored etcd's pod labels (the subchart's etcd.selectorLabels). */}}
{{- define "medallion.etcdSelector" -}}
app.kubernetes.io/name: etcd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* "true" when the vendored etcd speaks TLS; it takes the pods' certificates as clients. */}}
{{- define "medallion.etcdTls" -}}
{{- if and .Values.etcd.enabled .Values.etcd.tls.enabled }}
{{- if not .Values.tls.enabled }}
{{- fail "etcd.tls.enabled needs tls.enabled: etcd's clients are the pods, by their certificate (or set etcd.tls.enabled=false)" }}
{{- end }}
{{- true }}
{{- else }}
{{- false }}
{{- end }}
{{- end }}

{{/* The Secret holding the vendored etcd's certificate, key and CA (the subchart's default). */}}
{{- define "medallion.etcdTlsSecret" -}}
{{- .Values.etcd.tls.secretName | default (printf "%s-tls" (include "medallion.etcdName" .)) }}
{{- end }}

{{/* The names etcd's certificate must hold: its client Service and every member. */}}
{{- define "medallion.etcdDnsNames" -}}
{{- $etcd := include "medallion.etcdName" . }}
{{- $peer := printf "%s-peer" ($etcd | trunc 58 | trimSuffix "-") }}
{{- $ns := .Release.Namespace }}
- {{ $etcd }}
- {{ $etcd }}.{{ $ns }}
- {{ $etcd }}.{{ $ns }}.svc
- {{ $etcd }}.{{ $ns }}.svc.cluster.local
- "*.{{ $peer }}.{{ $ns }}.svc"
- "*.{{ $peer }}.{{ $ns }}.svc.cluster.local"
- localhost
{{- end }}

{{- define "medallion.objectStorageSecret" -}}
{{- default (include "medallion.componentName" (dict "root" . "component" "storage")) .Values.objectStorage.existingSecret }}
{{- end }}

{{/* Environment every Medallion container gets: its pod's address, object-storage settings. */}}
{{- define "medallion.commonEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .Values.tls.enabled }}
- name: MEDALLION_TLS_CERT
  value: /etc/medallion/tls/tls.crt
- name: MEDALLION_TLS_KEY
  value: /etc/medallion/tls/tls.key
- name: MEDALLION_TLS_CA
  value: /etc/medallion/tls/ca.crt
- name: MEDALLION_TLS_SERVER_NAME
  value: {{ include "medallion.componentName" (dict "root" . "component" "coordinator") }}
{{- end }}
{{- if eq (include "medallion.etcdTls" .) "true" }}
# etcd knows the pods by their certificate, signed by the CA that signed etcd's.
- name: MEDALLION_ETCD_CA
  value: /etc/medallion/tls/ca.crt
- name: MEDALLION_ETCD_CERT
  value: /etc/medallion/tls/tls.crt
- name: MEDALLION_ETCD_KEY
  value: /etc/medallion/tls/tls.key
{{- end }}
{{- with .Values.objectStorage }}
{{- if .enabled }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "medallion.objectStorageSecret" $ }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "medallion.objectStorageSecret" $ }}
      key: {{ .secretAccessKeyKey }}
{{- with .region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- if .forcePathStyle }}
- name: AWS_FORCE_PATH_STYLE
  value: "true"
{{- end }}
{{- if .allowHttp }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes every Medallion pod mounts: scratch space (the root filesystem is read-only), the lake, TLS. */}}
{{- define "medallion.volumeMounts" -}}
- name: scratch
  mountPath: /tmp
{{- if .Values.lakeVolume.enabled }}
- name: lake
  mountPath: {{ .Values.lakeVolume.mountPath }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/medallion/tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "medallion.volumes" -}}
- name: scratch
  emptyDir:
    sizeLimit: {{ .sizeLimit }}
{{- if .root.Values.lakeVolume.enabled }}
- name: lake
  persistentVolumeClaim:
    claimName: {{ required "lakeVolume.existingClaim is required when lakeVolume.enabled" .root.Values.lakeVolume.existingClaim }}
{{- end }}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "medallion.tlsSecret" .root }}
{{- end }}
{{- end }}

{{/* The Secret holding the pods' certificate, key and CA. */}}
{{- define "medallion.tlsSecret" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "medallion.fullname" .)) }}
{{- end }}

{{/* The Secret holding the client API's token file. */}}
{{- define "medallion.tokensSecret" -}}
{{- .Values.auth.tokensSecret | default (printf "%s-api-tokens" (include "medallion.fullname" .)) }}
{{- end }}

{{/* The URL scheme of the gRPC ports. */}}
{{- define "medallion.scheme" -}}
{{- ternary "https" "http" .Values.tls.enabled }}
{{- end }}

{{/* A probe of a gRPC port: the health service, or, under TLS (which kubelet's gRPC probes cannot speak), the port accepting connections. */}}
{{- define "medallion.probe" -}}
{{- if .root.Values.tls.enabled }}
tcpSocket:
  port: {{ .port }}
{{- else }}
grpc:
  port: {{ .port }}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Pod-level settings both Deployments share. */}}
{{- define "medallion.podSpecCommon" -}}
serviceAccountName: {{ include "medallion.serviceAccountName" .root }}
automountServiceAccountToken: {{ .root.Values.serviceAccount.automountToken }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.affinity }}
affinity:
  {{- toYaml .values.affinity | nindent 2 }}
{{- else }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "medallion.componentSelector" . | nindent 14 }}
{{- end }}
{{- end }}

{{/* NetworkPolicy peers: the ones given, or any pod of the namespace. */}}
{{- define "medallion.peersFrom" -}}
{{- if . }}
{{- toYaml . }}
{{- else }}
- podSelector: {}
{{- end }}
{{- end }}
