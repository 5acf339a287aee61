{{/* The release's full name: the release name when it contains the chart's, else both. */}}
{{- define "readygate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The pods' label: also what the webhook's default objectSelector excludes. */}}
{{- define "readygate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
{{- end -}}

{{- define "readygate.labels" -}}
{{ include "readygate.selectorLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "readygate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "readygate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "readygate.webhookService" -}}
{{- printf "%s-webhook" (include "readygate.fullname" .) -}}
{{- end -}}

{{- define "readygate.tlsSecret" -}}
{{- printf "%s-webhook-tls" (include "readygate.fullname" .) -}}
{{- end -}}

{{/* The serving certificate's DNS names: the webhook Service's. */}}
{{- define "readygate.dnsNames" -}}
{{- $svc := include "readygate.webhookService" . -}}
{{- list (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) | toJson -}}
{{- end -}}

{{/*
The webhook's TLS when the chart makes it: the Secret's current CA and key pair when it holds
them (kept across upgrades), else a new ECDSA P-256 CA and a serving certificate for the webhook
Service's names. Base64 values; include it once per render (webhook.yaml).
*/}}
{{- define "readygate.tls" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "readygate.tlsSecret" .) -}}
{{- $data := dig "data" (dict) $secret -}}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") -}}
ca: {{ index $data "ca.crt" }}
crt: {{ index $data "tls.crt" }}
key: {{ index $data "tls.key" }}
{{- else -}}
{{- $dns := include "readygate.dnsNames" . | fromJsonArray -}}
{{- $ca := genCAWithKey (printf "%s-ca" (include "readygate.fullname" .)) (int .Values.tls.caDays) (genPrivateKey "ecdsa") -}}
{{- $cert := genSignedCertWithKey (first $dns) nil $dns (int .Values.tls.certDays) $ca (genPrivateKey "ecdsa") -}}
ca: {{ $ca.Cert | b64enc }}
crt: {{ $cert.Cert | b64enc }}
key: {{ $cert.Key | b64enc }}
{{- end -}}
{{- end -}}

{{/* The flags that point readygate status and doctor at this release's Lease. */}}
{{- define "readygate.leaseFlags" -}}
{{- with .Values.serve.leaseName }} --lease-name {{ . }}{{ end -}}
{{- if ne .Release.Namespace "readygate-system" }} --lease-namespace {{ .Release.Namespace }}{{ end -}}
{{- end -}}
