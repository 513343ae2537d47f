{{- define "platform.name" -}}
{{- printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "platform.labels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: movierec-platform
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "platform.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "platform.secretName" -}}
{{- .Values.credentials.existingSecret | default (printf "%s-credentials" .Release.Name) -}}
{{- end -}}

{{/* Pod-level placement on the platform node (where the local-path volumes live). */}}
{{- define "platform.placement" -}}
nodeSelector:
  {{- toYaml .Values.platformNode.nodeSelector | nindent 2 }}
{{- with .Values.platformNode.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "platform.containerSecurity" -}}
allowPrivilegeEscalation: false
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "platform.pvc" -}}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ include "platform.name" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "platform.labels" . | nindent 4 }}
  annotations:
    # Data outlives an uninstall: delete the claim by hand to drop it.
    helm.sh/resource-policy: keep
spec:
  accessModes: ["ReadWriteOnce"]
  storageClassName: {{ .root.Values.storageClassName }}
  resources:
    requests:
      storage: {{ .size }}
{{- end -}}
