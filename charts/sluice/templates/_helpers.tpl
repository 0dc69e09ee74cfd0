{{- define "sluice.name" -}}sluice{{- end -}}
{{- define "sluice.fullname" -}}{{ .Release.Name }}-controller{{- end -}}
{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "sluice.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}
{{- define "sluice.labels" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}
