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

{{/* The progress endpoint's Service; the fullname is cut so that the name stays a DNS label (63). */}}
{{- define "lora-operator.progressName" -}}
{{- printf "%s-progress" (include "lora-operator.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{- define "lora-operator.progressURL" -}}
{{- printf "https://%s.%s.svc:%d" (include "lora-operator.progressName" .) .Release.Namespace (int .Values.progress.port) -}}
{{- end -}}

{{/* The serving certificate's DNS names: every name a pod may resolve the Service by. */}}
{{- define "lora-operator.progressDNSNames" -}}
{{- $name := include "lora-operator.progressName" . -}}
- {{ $name }}
- {{ $name }}.{{ .Release.Namespace }}
- {{ $name }}.{{ .Release.Namespace }}.svc
- {{ $name }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}

{{- define "lora-operator.progressTLSSecret" -}}
{{- .Values.progress.tls.existingSecret | default (printf "%s-tls" (include "lora-operator.progressName" .)) -}}
{{- end -}}

{{/* "true" when the chart generates the TLS Secret itself (neither existingSecret nor cert-manager). */}}
{{- define "lora-operator.progressTLSGenerated" -}}
{{- if not (or .Values.progress.tls.existingSecret .Values.progress.tls.certManager.enabled) }}true{{ end -}}
{{- end -}}

{{/*
The generated TLS Secret's data (YAML). On upgrade the existing Secret's: running trainers trust its
CA. Memoized on the root context, because the Secret and the Deployment's checksum must see the
same random keys.
*/}}
{{- define "lora-operator.progressTLSData" -}}
{{- if not (hasKey $ "loraProgressTLSData") -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "lora-operator.progressTLSSecret" .) -}}
{{- if $secret -}}
{{- $_ := set $ "loraProgressTLSData" $secret.data -}}
{{- else -}}
{{- $name := include "lora-operator.progressName" . -}}
{{- $ca := genCA (printf "%s-ca" $name) 3650 -}}
{{- $cert := genSignedCert $name nil (include "lora-operator.progressDNSNames" . | fromYamlArray) 3650 $ca -}}
{{- $_ := set $ "loraProgressTLSData" (dict "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) "ca.crt" ($ca.Cert | b64enc)) -}}
{{- end -}}
{{- end -}}
{{- toYaml (get $ "loraProgressTLSData") -}}
{{- end -}}

{{/*
The rules for the watched namespaces: exactly the API calls of lora_operator (its handlers and
its progress endpoint) and Kopf, each explained in docs/operations.md. A ClusterRole in
cluster-wide mode, a Role in watchNamespace otherwise.
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
- apiGroups: [lora.airepublic.io]
  resources: [minions]
  verbs: [get, list, watch]
- apiGroups: [lora.airepublic.io]
  resources: [minions/status]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [serviceaccounts, configmaps, services]
  verbs: [get, create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
