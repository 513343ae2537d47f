{{/* Name of every object of this release: movierec-<stage>. */}}
{{- define "movierec.fullname" -}}
{{- printf "movierec-%s" .Values.stage | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "movierec.selectorLabels" -}}
app.kubernetes.io/name: movierec
app.kubernetes.io/instance: {{ include "movierec.fullname" . }}
movierec.io/stage: {{ .Values.stage | quote }}
{{- end -}}

{{- define "movierec.labels" -}}
{{ include "movierec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
