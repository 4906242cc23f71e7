{{- define "lora-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lora-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lora-operator.labels" -}}
{{ include "lora-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lora-operator.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "lora-operator.fullname" .) -}}
{{- end -}}

{{- define "lora-operator.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (.Values.trainer.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
The rules for the watched namespaces: exactly the API calls of lora_operator/handlers.py and
Kopf, each explained in docs/operations.md. A ClusterRole in cluster-wide mode, a Role in
watchNamespace otherwise.
*/}}
{{- define "lora-operator.namespacedRules" -}}
- apiGroups: [lora.airepublic.io]
  resources: [loratrainingjobs]
  verbs: [get, list, watch, patch]
- apiGroups: [lora.airepublic.io]
  resources: [loratrainingjobs/status]
  verbs: [get, patch]
- apiGroups: [lora.airepublic.io]
  resources: [loratrainingjobs/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [serviceaccounts, configmaps]
  verbs: [get, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
