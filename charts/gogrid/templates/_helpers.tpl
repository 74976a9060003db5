{{/*
Names, labels and image strings shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "gogrid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name when it
already contains the chart name, else `<release>-<name>`. Cut to 54 characters so
that the longest suffix (`-operator`) keeps names within 63.
*/}}
{{- define "gogrid.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* `<chart>-<version>` for the helm.sh/chart label. */}}
{{- define "gogrid.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names. */}}
{{- define "gogrid.operator.fullname" -}}
{{- printf "%s-operator" (include "gogrid.fullname" .) }}
{{- end }}

{{- define "gogrid.agent.fullname" -}}
{{- printf "%s-agent" (include "gogrid.fullname" .) }}
{{- end }}

{{/* ServiceAccount names: fixed, whether the chart creates them or not. */}}
{{- define "gogrid.operator.serviceAccountName" -}}
{{- include "gogrid.operator.fullname" . }}
{{- end }}

{{- define "gogrid.agent.serviceAccountName" -}}
{{- include "gogrid.agent.fullname" . }}
{{- end }}

{{/*
Labels of every object. Call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "gogrid.labels" -}}
helm.sh/chart: {{ include "gogrid.chart" .ctx }}
{{ include "gogrid.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: gogrid
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels that select the pods of one component. Call with
(dict "ctx" $ "component" "operator").
*/}}
{{- define "gogrid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gogrid.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The operator image: `<repository>:<tag>`, tag defaulting to appVersion. */}}
{{- define "gogrid.operator.image" -}}
{{- $tag := .Values.operator.image.tag | default .Chart.AppVersion | toString }}
{{- printf "%s:%s" .Values.operator.image.repository $tag }}
{{- end }}

{{/*
The agent image: `<repository>:<tag>`, tag defaulting to appVersion, with the
suffix `-cuda` for the cuda flavor.
*/}}
{{- define "gogrid.agent.image" -}}
{{- $tag := .Values.agent.image.tag | default .Chart.AppVersion | toString }}
{{- if eq .Values.agent.image.flavor "cuda" }}
{{- $tag = printf "%s-cuda" $tag }}
{{- end }}
{{- printf "%s:%s" .Values.agent.image.repository $tag }}
{{- end }}
