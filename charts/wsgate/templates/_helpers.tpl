{{/* The release's full name, at most 63 characters. */}}
{{- define "wsgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the pods; never change them across upgrades. */}}
{{- define "wsgate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "wsgate.labels" -}}
{{ include "wsgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels on a hook's pod (`helm test`, the uninstall Job): the release's, under a name of
its own (the dict's "name"), so that no Service or Deployment selector takes it for a
replica. */}}
{{- define "wsgate.hookPodLabels" -}}
app.kubernetes.io/name: {{ printf "%s-%s" .root.Chart.Name .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* The ServiceAccount the controller runs as. */}}
{{- define "wsgate.serviceAccountName" -}}
{{- default (include "wsgate.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* RBAC rules for reading routes and their references, writing status and Events. */}}
{{- define "wsgate.watchRules" -}}
- apiGroups: ["wsgate.dev"]
  resources: ["websocketroutes"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["wsgate.dev"]
  resources: ["websocketroutes/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
