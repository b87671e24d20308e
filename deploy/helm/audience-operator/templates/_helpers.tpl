{{/* The name of every object of the release. */}}
{{- define "audience-operator.name" -}}
{{- default .Release.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "audience-operator.labels" -}}
app.kubernetes.io/name: audience-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: audience-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The Pods' selector. */}}
{{- define "audience-operator.selector" -}}
app.kubernetes.io/name: audience-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The rules the controller needs on its own resources and for events. */}}
{{- define "audience-operator.rules" -}}
- apiGroups: ["aep.audience-operator.dev"]
  resources: ["externalaudiences"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["aep.audience-operator.dev"]
  resources: ["externalaudiences/status"]
  verbs: ["get", "patch"]
- apiGroups: ["aep.audience-operator.dev"]
  resources: ["externalaudiences/finalizers"]
  verbs: ["update"]
- apiGroups: ["aep.audience-operator.dev"]
  resources: ["audienceactivations"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["aep.audience-operator.dev"]
  resources: ["audienceactivations/status"]
  verbs: ["get", "patch"]
- apiGroups: ["aep.audience-operator.dev"]
  resources: ["audienceactivations/finalizers"]
  verbs: ["update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* The watched namespaces, comma-separated; empty when every namespace is watched. By default
the release's own namespace: the least-privilege install (Roles only). */}}
{{- define "audience-operator.watched" -}}
{{- if .Values.watchAllNamespaces -}}
{{- if .Values.watchNamespaces -}}
{{- fail "set either watchAllNamespaces (every namespace) or watchNamespaces (a list), not both" -}}
{{- end -}}
{{- else -}}
{{- join "," (default (list .Release.Namespace) .Values.watchNamespaces) -}}
{{- end -}}
{{- end -}}
