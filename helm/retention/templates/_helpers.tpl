{{- define "retention.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "retention.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "retention.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "retention.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "retention.selectorLabels" -}}
app.kubernetes.io/name: {{ include "retention.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "retention.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "retention.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the daemon reads its policies: the git checkout, or the mounted ConfigMap. */}}
{{- define "retention.policiesPath" -}}
{{- if .Values.gitSync.enabled -}}
/git/current/{{ .Values.gitSync.path }}
{{- else -}}
/etc/retention/policies
{{- end -}}
{{- end -}}

{{- define "retention.hasAllowlist" -}}
{{- if or .Values.allowlist.existingConfigMap .Values.allowlist.entries -}}true{{- end -}}
{{- end -}}

{{/*
Values that contradict each other fail the install with a message, instead of a daemon that
silently ignores part of them or does not start.
*/}}
{{- define "retention.checkValues" -}}
{{- if and (not .Values.config.existingConfigMap) (not .Values.registries) -}}
{{- fail "registries: no registry is configured. Set at least one, e.g. --set registries.main.url=https://registry.example.com (see docs/operations.md), or give a complete retention.yaml with config.existingConfigMap" -}}
{{- end -}}
{{- if .Values.gitSync.enabled -}}
{{- if or .Values.policies.files .Values.policies.existingConfigMap -}}
{{- fail "policies: with gitSync.enabled the policies come from git only; remove policies.files and policies.existingConfigMap (they would be ignored)" -}}
{{- end -}}
{{- else if and (not .Values.policies.files) (not .Values.policies.existingConfigMap) -}}
{{- fail "policies: no policy is configured. Set policies.files, policies.existingConfigMap or gitSync (see docs/operations.md)" -}}
{{- end -}}
{{- if and .Values.policies.files .Values.policies.existingConfigMap -}}
{{- fail "policies: set policies.files or policies.existingConfigMap, not both (the ConfigMap would win and the files be ignored)" -}}
{{- end -}}
{{- if and .Values.allowlist.entries .Values.allowlist.existingConfigMap -}}
{{- fail "allowlist: set allowlist.entries or allowlist.existingConfigMap, not both (the ConfigMap would win and the entries be ignored)" -}}
{{- end -}}
{{- end -}}

{{/*
The daemon talks to registries only: no Kubernetes API token in the pod unless a feature
that reads the cluster needs it.
*/}}
{{- define "retention.automountServiceAccountToken" -}}
{{- /* Only the in-cluster in-use source reads the API: no token otherwise. */ -}}
{{- if and .Values.inUse.enabled .Values.inUse.inCluster.enabled -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}
