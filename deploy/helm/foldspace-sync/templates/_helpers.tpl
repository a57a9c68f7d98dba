{{- define "foldspace-sync.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "foldspace-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "foldspace-sync.labels" -}}
{{ include "foldspace-sync.selectorLabels" . }}
app.kubernetes.io/component: daemon
app.kubernetes.io/part-of: foldspace-sync
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "foldspace-sync.config" -}}
{{- $c := deepCopy .Values.config -}}
{{- $_ := set $c "brokers" .Values.brokers -}}
{{- $_ := set $c "topics" .Values.topics -}}
{{- $_ := set $c "group" .Values.group -}}
{{ toPrettyJson $c }}
{{- end -}}
