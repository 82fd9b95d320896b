{{/*
Names and labels.
*/}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the
chart name. Truncated to 63 characters (a DNS label; also the pod's hostname).
*/}}
{{- define "berth.fullname" -}}
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

{{- define "berth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "berth.labels" -}}
helm.sh/chart: {{ include "berth.chart" . }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: berth
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "berth.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Secret names. Each is the existing Secret when one is named, else the chart's
own name for it (created with `create: true`, or created by the operator).
The optional ones render empty when disabled.
*/}}
{{- define "berth.sshSecretName" -}}
{{- default (printf "%s-ssh" (include "berth.fullname" .)) .Values.ssh.existingSecret }}
{{- end }}

{{- define "berth.gitSecretName" -}}
{{- if ne .Values.git.auth "none" }}
{{- default (printf "%s-git" (include "berth.fullname" .)) .Values.git.existingSecret }}
{{- end }}
{{- end }}

{{- define "berth.apiTokenSecretName" -}}
{{- if .Values.apiToken.existingSecret }}
{{- .Values.apiToken.existingSecret }}
{{- else if .Values.apiToken.create }}
{{- printf "%s-api-token" (include "berth.fullname" .) }}
{{- end }}
{{- end }}

{{- define "berth.webhookSecretName" -}}
{{- if .Values.webhookSecret.existingSecret }}
{{- .Values.webhookSecret.existingSecret }}
{{- else if .Values.webhookSecret.create }}
{{- printf "%s-webhook" (include "berth.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Combinations of values the schema cannot express. Fails rendering with the
offending keys named.
*/}}
{{- define "berth.validate" -}}
{{- $v := .Values }}
{{- if and $v.git.tag $v.git.commit }}
{{- fail "git.tag and git.commit are exclusive: follow a tag glob or pin a commit, not both" }}
{{- end }}
{{- range $name := list "ssh" "git" "apiToken" "webhookSecret" }}
{{- $s := index $v $name }}
{{- if and $s.create $s.existingSecret }}
{{- fail (printf "%s.create and %s.existingSecret are exclusive: create the Secret from values or name an existing one" $name $name) }}
{{- end }}
{{- end }}
{{- if $v.ssh.create }}
{{- if not (and $v.ssh.privateKey $v.ssh.knownHosts) }}
{{- fail "ssh.create needs ssh.privateKey and ssh.knownHosts (or name an existing Secret in ssh.existingSecret)" }}
{{- end }}
{{- end }}
{{- if and $v.git.create (eq $v.git.auth "none") }}
{{- fail "git.create is set but git.auth is none: set git.auth to ssh or token" }}
{{- end }}
{{- if and $v.git.create (eq $v.git.auth "ssh") (not $v.git.sshKey) }}
{{- fail "git.create with git.auth=ssh needs git.sshKey" }}
{{- end }}
{{- if and $v.git.create (eq $v.git.auth "ssh") $v.git.keys.knownHosts (not $v.git.knownHosts) }}
{{- fail "git.create with git.auth=ssh needs git.knownHosts (or set git.keys.knownHosts to \"\" to use the fleet's known_hosts)" }}
{{- end }}
{{- if and $v.git.create (eq $v.git.auth "token") (not $v.git.token) }}
{{- fail "git.create with git.auth=token needs git.token" }}
{{- end }}
{{- if and $v.apiToken.create (not $v.apiToken.value) }}
{{- fail "apiToken.create needs apiToken.value" }}
{{- end }}
{{- if and $v.webhookSecret.create (not $v.webhookSecret.value) }}
{{- fail "webhookSecret.create needs webhookSecret.value" }}
{{- end }}
{{- if and (eq $v.git.auth "ssh") $v.git.repo (not (hasPrefix "ssh://" $v.git.repo)) }}
{{- fail (printf "git.auth=ssh needs an ssh:// repository URL (git.repo is %q)" $v.git.repo) }}
{{- end }}
{{- if and (eq $v.git.auth "token") $v.git.repo (not (hasPrefix "https://" $v.git.repo)) }}
{{- fail (printf "git.auth=token needs an https:// repository URL (git.repo is %q)" $v.git.repo) }}
{{- end }}
{{- end }}

{{/*
The arguments of `berth run` (the image's ENTRYPOINT is `tini -- berth`).
Only file paths are passed: no secret is ever on the command line.
*/}}
{{- define "berth.args" -}}
{{- $v := .Values -}}
- run
- --listen
- 0.0.0.0:9090
- --checkout
- /var/lib/berth/checkout
- --state-dir
- /var/lib/berth/state
{{- with $v.git.repo }}
- --repo
- {{ . | quote }}
{{- end }}
{{- if $v.git.tag }}
- --tag
- {{ $v.git.tag | quote }}
{{- else if $v.git.commit }}
- --commit
- {{ $v.git.commit | quote }}
{{- else }}
- --branch
- {{ $v.git.branch | quote }}
{{- end }}
{{- if eq $v.git.auth "ssh" }}
- --git-ssh-key
- /etc/berth/git/ssh-key
{{- if $v.git.keys.knownHosts }}
- --git-known-hosts
- /etc/berth/git/known_hosts
{{- end }}
{{- else if eq $v.git.auth "token" }}
- --git-token-file
- /etc/berth/git/token
{{- if $v.git.keys.caCert }}
- --git-ca-file
- /etc/berth/git/ca.pem
{{- end }}
{{- end }}
{{- if $v.apps }}
{{- /* berth.yml names each app's config, destinations and policy: -c, -d,
       --app, --mode and --self-heal would be ignored, so they are not passed. */}}
- --apps-file
- /etc/berth/config/berth.yml
{{- else }}
- -c
- {{ $v.configFile | quote }}
{{- with $v.destination }}
- -d
- {{ . | quote }}
{{- end }}
{{- with $v.app }}
- --app
- {{ . | quote }}
{{- end }}
- --mode
- {{ $v.mode | quote }}
- --self-heal
- {{ $v.selfHeal | toString | quote }}
{{- end }}
- --interval
- {{ $v.interval | quote }}
- --known-hosts
- /etc/berth/ssh/known_hosts
{{- if include "berth.apiTokenSecretName" . }}
- --api-token-file
- /etc/berth/api/token
{{- end }}
{{- if include "berth.webhookSecretName" . }}
- --webhook-secret-file
- /etc/berth/webhook/secret
{{- end }}
{{- if .Values.sopsAgeKey.existingSecret }}
- --age-key-file
- /etc/berth/sops/keys.txt
{{- end }}
{{- if $v.notifications }}
- --notifications-file
- /etc/berth/config/notifications.yml
{{- end }}
{{- with $v.externalUrl }}
- --external-url
- {{ . | quote }}
{{- end }}
- --log-format
- {{ $v.logFormat | quote }}
{{- range $v.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
A Prometheus duration in one unit (30s, 15m, 2h, 1d) as seconds, for
comparisons with timestamps in alert expressions.
*/}}
{{- define "berth.durationSeconds" -}}
{{- $d := toString . }}
{{- if not (regexMatch "^[0-9]+[smhd]$" $d) }}
{{- fail (printf "%q is not a duration in one unit (30s, 15m, 2h, 1d)" $d) }}
{{- end }}
{{- $n := regexReplaceAll "^([0-9]+)([smhd])$" $d "${1}" | int }}
{{- $unit := regexReplaceAll "^([0-9]+)([smhd])$" $d "${2}" }}
{{- mul $n (get (dict "s" 1 "m" 60 "h" 3600 "d" 86400) $unit) }}
{{- end }}

{{/*
"app" or "app/destination" in alert text (a Prometheus template, kept
verbatim by Helm).
*/}}
{{- define "berth.alertTarget" -}}
{{`{{ $labels.app }}{{ with $labels.destination }}/{{ . }}{{ end }}`}}
{{- end }}
