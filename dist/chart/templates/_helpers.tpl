{{- define "involveo.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "involveo.labels" -}}
app.kubernetes.io/name: involveo-webhooks
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "involveo.selector" -}}
app.kubernetes.io/name: involveo-webhooks
control-plane: controller-manager
{{- end }}
