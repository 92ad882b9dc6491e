{{/*
The five services: name -> python module, port (horde_common.service_ports), values key, replicas.
*/}}
{{- define "horde.components" -}}
scheduler:
  module: horde_scheduler
  port: 8001
  valuesKey: scheduler
  scalable: false
job-runner:
  module: horde_job_runner
  port: 8002
  valuesKey: jobRunner
  scalable: true
weights:
  module: horde_weights
  port: 8003
  valuesKey: weights
  scalable: false
facilitator-gateway:
  module: horde_facilitator_gateway
  port: 8004
  valuesKey: facilitatorGateway
  scalable: false
cross-validator:
  module: horde_cross_validator
  port: 8005
  valuesKey: crossValidator
  scalable: false
{{- end }}

{{- define "horde.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Release-wide name prefix; component names are "<fullname>-<component>" (max 63 characters).
*/}}
{{- define "horde.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "horde.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "horde.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "horde.labels" -}}
helm.sh/chart: {{ include "horde.chart" . }}
{{ include "horde.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: horde-validator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "horde.selectorLabels" -}}
app.kubernetes.io/name: {{ include "horde.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component. Call with (dict "root" $ "component" "job-runner").
*/}}
{{- define "horde.componentLabels" -}}
{{ include "horde.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "horde.componentSelectorLabels" -}}
{{ include "horde.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Environment from Secrets, shared by the services and the migration Job.
*/}}
{{- define "horde.connectionEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.connections.name }}
      key: {{ .Values.secrets.connections.databaseUrlKey }}
- name: AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.connections.name }}
      key: {{ .Values.secrets.connections.amqpUrlKey }}
{{- end }}

{{- define "horde.secretEnv" -}}
{{ include "horde.connectionEnv" . }}
{{- with .Values.secrets.aws }}
{{- if .name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- with .Values.secrets.debugToken }}
{{- if .name }}
- name: DEBUG_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Pod-level settings shared by every pod of the chart.
*/}}
{{- define "horde.podSpecCommon" -}}
automountServiceAccountToken: false
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
