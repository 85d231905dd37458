{{- define "clew.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "clew.operatorName" -}}
{{- printf "%s-operator" (include "clew.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clew.webhookService" -}}
{{- printf "%s-operator-webhook" (include "clew.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clew.webhookSecret" -}}
{{- printf "%s-operator-webhook-tls" (include "clew.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clew.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "clew.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "clew.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "clew.selectorLabels" -}}
app.kubernetes.io/name: clew
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "clew.labels" -}}
{{ include "clew.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: clew
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}
