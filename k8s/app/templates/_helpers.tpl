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

{{/* Whether a deploy has written model.version: before the first one the alias may not
     exist, so the release runs no pods (they would crash-loop: `movierec serve --model
     models:/movierec@<alias>` exits on a missing alias) and routes no traffic. */}}
{{- define "movierec.deployed" -}}
{{- if ne (toString .Values.model.version) "" -}}true{{- end -}}
{{- end -}}
