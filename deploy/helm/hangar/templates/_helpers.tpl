{{/* Names and labels shared by every object of the release. */}}
{{- define "hangar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hangar.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "hangar.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hangar.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "hangar.secretName" -}}
{{ include "hangar.fullname" . }}-secrets
{{- end -}}

{{/* The environment of every console process: settings, then the three secrets. */}}
{{- define "hangar.env" -}}
- name: HANGAR_DATA_DIR
  value: /var/lib/hangar
- name: HANGAR_ALLOWED_HOSTS
  value: {{ .Values.host | quote }}
- name: HANGAR_CSRF_TRUSTED_ORIGINS
  value: {{ printf "https://%s" .Values.host | quote }}
- name: HANGAR_PUBLIC_URL
  value: {{ printf "https://%s" .Values.host | quote }}
- name: HANGAR_GATEWAY_BIND
  value: {{ printf "0.0.0.0:%v" .Values.gateway.port | quote }}
- name: HANGAR_GATEWAY_ADMIN_BIND
  value: {{ printf "0.0.0.0:%v" .Values.gateway.adminPort | quote }}
{{- range $name, $value := merge (dict) .Values.extraEnv .Values.config }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
- name: HANGAR_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalDatabase.existingSecret | default (include "hangar.secretName" .) }}
      key: {{ .Values.externalDatabase.existingSecretKey }}
- name: HANGAR_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret | default (include "hangar.secretName" .) }}
      key: {{ .Values.externalRedis.existingSecretKey }}
- name: HANGAR_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secretKey.existingSecret | default (include "hangar.secretName" .) }}
      key: {{ .Values.secretKey.existingSecretKey }}
{{- with .Values.externalRedis.agentUrl }}
- name: HANGAR_AGENT_BROKER_URL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "hangar.volumes" -}}
- name: data
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.existingClaim | default (printf "%s-data" (include "hangar.fullname" .)) }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "hangar.mounts" -}}
- name: data
  mountPath: /var/lib/hangar
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "hangar.pod" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
volumes:
  {{- include "hangar.volumes" . | nindent 2 }}
{{- end -}}
