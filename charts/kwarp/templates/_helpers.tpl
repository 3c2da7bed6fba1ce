{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "kwarp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"<release>-<chart>", or just the release name when it already holds the chart name. Truncated to 52
characters so that suffixed names ("-worker", "-metrics", "-discovery") stay within 63.
*/}}
{{- define "kwarp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kwarp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "kwarp.labels" -}}
helm.sh/chart: {{ include "kwarp.chart" . }}
app.kubernetes.io/name: {{ include "kwarp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kwarp
{{- end }}

{{/*
Selector of the operator pod. The component label keeps it apart from the worker pods, which share
app.kubernetes.io/name (the PodMonitor selects those by their kwarp.dev/run label).
*/}}
{{- define "kwarp.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "kwarp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kwarp.operatorLabels" -}}
{{ include "kwarp.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kwarp.operatorServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kwarp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kwarp.workerServiceAccountName" -}}
{{- default (printf "%s-worker" (include "kwarp.fullname" .)) .Values.workers.serviceAccount.name }}
{{- end }}

{{/* "repository:tag" or "repository@digest" from an image block; the tag defaults to appVersion. */}}
{{- define "kwarp.imageRef" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "kwarp.peeringName" -}}
{{- default (include "kwarp.fullname" .) .Values.peering.name }}
{{- end }}

{{/* True (non-empty) when the operator watches only the listed namespaces. */}}
{{- define "kwarp.namespaced" -}}
{{- if .Values.operator.watchNamespaces }}true{{- end }}
{{- end }}

{{/*
Namespaces that get the worker ServiceAccount, one per line: the watched namespaces, or (cluster-wide)
the release namespace plus workers.serviceAccount.namespaces.
*/}}
{{- define "kwarp.workerNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- range (uniq .Values.operator.watchNamespaces) }}
{{ . }}
{{- end }}
{{- else }}
{{- range (uniq (prepend .Values.workers.serviceAccount.namespaces .Release.Namespace)) }}
{{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret holding the S3 credentials, or nothing when none is configured. */}}
{{- define "kwarp.s3SecretName" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else if .Values.s3.accessKey }}
{{- printf "%s-s3" (include "kwarp.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The operator's guardrails (KWARP_GUARDRAILS): the guardrails.* values, plus the worker image's repository
and the worker ServiceAccount, which a run may always name.
*/}}
{{- define "kwarp.guardrails" -}}
{{- $g := deepCopy .Values.guardrails -}}
{{- $_ := set $g "images" (append $g.images .Values.workers.image.repository | uniq) -}}
{{- $_ := set $g "serviceAccounts" (append $g.serviceAccounts (include "kwarp.workerServiceAccountName" .) | uniq) -}}
{{- toJson $g -}}
{{- end }}
