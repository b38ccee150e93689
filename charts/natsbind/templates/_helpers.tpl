{{/* The app name: the chart's, or nameOverride. */}}
{{- define "natsbind.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name. A release named natsbind (or natsbind-something) is not
prefixed twice: `helm install natsbind` gives the names of deploy/.
*/}}
{{- define "natsbind.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
What selects the pods (Deployment, Service, PodDisruptionBudget, NetworkPolicy) and what the webhook
relay trusts a Lease holder's pod by (kubernetes.relay.podLabels): deploy/'s two labels, plus the
release so that two releases in one namespace never select each other's pods.
*/}}
{{- define "natsbind.selectorLabels" -}}
app.kubernetes.io/name: {{ include "natsbind.name" . }}
app.kubernetes.io/component: controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "natsbind.labels" -}}
{{ include "natsbind.selectorLabels" . }}
app.kubernetes.io/version: {{ include "natsbind.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "natsbind.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "natsbind.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "natsbind.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing service account when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where the pod mounts the ConfigMap and the Secrets: the paths natsbind.yaml names. */}}
{{- define "natsbind.configDir" -}}/etc/natsbind/config{{- end }}
{{- define "natsbind.natsDir" -}}/etc/natsbind/nats{{- end }}
{{- define "natsbind.gitlabDir" -}}/etc/natsbind/gitlab{{- end }}
{{- define "natsbind.calloutDir" -}}/etc/natsbind/callout{{- end }}

{{/*
natsbind.yaml: .Values.config with what the chart decides filled in. Fields the chart sets are
refused in .Values.config (a value there would silently disagree with a mount, the RBAC or the
Service), each with what to set instead.
*/}}
{{- define "natsbind.configYaml" -}}
{{- $user := deepCopy .Values.config }}
{{- $owned := list
  (list "mode" "" "the chart runs natsbind in Kubernetes mode")
  (list "http" "" "the chart listens on 0.0.0.0:8080 (the Service and the probes use it); terminate TLS at an Ingress")
  (list "bindings" "" "local mode only")
  (list "keys" "" "local mode only")
  (list "state" "" "local mode only")
  (list "nats" "systemCreds" "set secrets.nats.systemUser: creds and put system.creds into Secret secrets.nats.name")
  (list "nats" "systemSigningKey" "set secrets.nats.systemUser: signingKey and put system-account-signing.nk into Secret secrets.nats.name")
  (list "nats" "operatorSigningKey" "the chart reads operator-signing.nk from Secret secrets.nats.name")
  (list "nats" "operatorJwt" "the chart reads operator.jwt from Secret secrets.nats.name")
  (list "gitlab" "tokenFile" "the chart reads key token of Secret secrets.gitlab.name")
  (list "gitlab" "webhookSecretFile" "set secrets.gitlab.webhookSecret (key webhook-secret of Secret secrets.gitlab.name)")
  (list "kubernetes" "namespace" "set watchNamespace: it also decides the RBAC")
  (list "kubernetes" "kubeconfig" "natsbind uses its service account")
  (list "kubernetes" "relay" "the chart sets it from the Deployment's labels and namespace")
  (list "credentials" "callout" "set secrets.callout.name: the chart mounts that Secret and names its files")
}}
{{- range $owned }}
{{- $section := index . 0 }}
{{- $key := index . 1 }}
{{- if eq $key "" }}
{{- if hasKey $user $section }}
{{- fail (printf "config.%s is set by the chart: %s. Remove it from config." $section (index . 2)) }}
{{- end }}
{{- else if and (hasKey $user $section) (kindIs "map" (get $user $section)) (hasKey (get $user $section) $key) }}
{{- fail (printf "config.%s.%s is set by the chart: %s. Remove it from config." $section $key (index . 2)) }}
{{- end }}
{{- end }}
{{- $election := dig "kubernetes" "leaderElection" (dict) $user }}
{{- range list "namespace" "name" }}
{{- if hasKey $election . }}
{{- fail (printf "config.kubernetes.leaderElection.%s is set by the chart: the Lease is the release's (namespace and full name), which its Role names. Remove it from config." .) }}
{{- end }}
{{- end }}

{{- $nats := dict "operatorSigningKey" (printf "%s/operator-signing.nk" (include "natsbind.natsDir" .)) "operatorJwt" (printf "%s/operator.jwt" (include "natsbind.natsDir" .)) }}
{{- if eq .Values.secrets.nats.systemUser "creds" }}
{{- $_ := set $nats "systemCreds" (printf "%s/system.creds" (include "natsbind.natsDir" .)) }}
{{- else }}
{{- $_ := set $nats "systemSigningKey" (printf "%s/system-account-signing.nk" (include "natsbind.natsDir" .)) }}
{{- end }}
{{- $gitlab := dict "tokenFile" (printf "%s/token" (include "natsbind.gitlabDir" .)) }}
{{- if .Values.secrets.gitlab.webhookSecret }}
{{- $_ := set $gitlab "webhookSecretFile" (printf "%s/webhook-secret" (include "natsbind.gitlabDir" .)) }}
{{- end }}
{{- $kubernetes := dict
  "leaderElection" (dict "namespace" .Release.Namespace "name" (include "natsbind.fullname" .))
  "relay" (dict "podLabels" (include "natsbind.selectorLabels" . | fromYaml))
}}
{{- with .Values.watchNamespace }}
{{- $_ := set $kubernetes "namespace" . }}
{{- end }}
{{- $chart := dict "mode" "kubernetes" "nats" $nats "gitlab" $gitlab "kubernetes" $kubernetes "http" (dict "listen" "0.0.0.0:8080") }}
{{- if .Values.secrets.callout.name }}
{{- if not (hasKey $user "credentials") }}
{{- fail "secrets.callout.name needs a credentials section in config (config.credentials.audience at least): the callout issues CI credentials" }}
{{- end }}
{{- $_ := set $chart "credentials" (dict "callout" (dict "credsFile" (printf "%s/callout.creds" (include "natsbind.calloutDir" .)) "signingKeyFile" (printf "%s/callout-account-signing.nk" (include "natsbind.calloutDir" .)))) }}
{{- end }}
{{- mergeOverwrite $user $chart | toYaml }}
{{- end }}
