{{/* Names. */}}
{{/* At most 43 characters: "<fullname>-database" names a StatefulSet, whose pods'
controller-revision-hash label (name + "-" + 10 characters) must fit in 63. */}}
{{- define "sf.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 43 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 43 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sf.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "api"). */}}
{{- define "sf.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sf.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sf.secretName" -}}
{{- default (printf "%s-secrets" (include "sf.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{/* The gateway's StatefulSet and headless Service share this name. */}}
{{- define "sf.databaseName" -}}
{{- printf "%s-database" (include "sf.fullname" .) -}}
{{- end -}}

{{/* Every gateway replica by its stable DNS name: the clients' MARIADB_GATEWAY_HOSTS. */}}
{{- define "sf.gatewayHosts" -}}
{{- $name := include "sf.databaseName" . -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.database.replicas) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s.%s.svc:%d" $name $i $name $.Release.Namespace (int $.Values.database.port)) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- end -}}

{{/* A secret key as an env var: (dict "root" $ "name" "SHAKENFIST_X" "key" "k"). */}}
{{- define "sf.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "sf.secretName" .root }}
      key: {{ .key }}
{{- end -}}

{{/* What every daemon shares: logging, and how to reach sf-database. */}}
{{- define "sf.commonEnv" -}}
- name: SHAKENFIST_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: SHAKENFIST_LOG
  value: {{ .Values.log | quote }}
{{ include "sf.secretEnv" (dict "root" . "name" "SHAKENFIST_MARIADB_GATEWAY_SECRET" "key" "mariadb-gateway-secret") }}
{{- end -}}

{{- define "sf.clientEnv" -}}
{{ include "sf.commonEnv" . }}
- name: SHAKENFIST_MARIADB_GATEWAY_HOSTS
  value: {{ include "sf.gatewayHosts" . | quote }}
{{- end -}}

{{/* MariaDB connection settings (sf-database and the schema job only). */}}
{{- define "sf.mariadbEnv" -}}
- name: SHAKENFIST_MARIADB_HOST
  value: {{ required "mariadb.host is required: the MariaDB server's address" .Values.mariadb.host | quote }}
- name: SHAKENFIST_MARIADB_PORT
  value: {{ .Values.mariadb.port | quote }}
- name: SHAKENFIST_MARIADB_USER
  value: {{ .Values.mariadb.user | quote }}
- name: SHAKENFIST_MARIADB_DATABASE
  value: {{ .Values.mariadb.database | quote }}
{{- $tls := .Values.mariadb.tls | default dict }}
- name: SHAKENFIST_MARIADB_SSL_MODE
  value: {{ $tls.mode | default "disabled" | quote }}
{{- if $tls.caSecret }}
- name: SHAKENFIST_MARIADB_SSL_CA
  value: /etc/shakenfist/mariadb-tls/ca.crt
{{- end }}
{{ include "sf.secretEnv" (dict "root" . "name" "SHAKENFIST_MARIADB_PASSWORD" "key" "mariadb-password") }}
{{- end -}}

{{/* The MariaDB CA's mount, for containers that connect to MariaDB. */}}
{{- define "sf.mariadbTlsMount" -}}
{{- if (.Values.mariadb.tls | default dict).caSecret }}
volumeMounts:
  - name: mariadb-tls
    mountPath: /etc/shakenfist/mariadb-tls
    readOnly: true
{{- end }}
{{- end -}}

{{/* The MariaDB CA's volume, for pods whose containers mount it. */}}
{{- define "sf.mariadbTlsVolume" -}}
{{- with (.Values.mariadb.tls | default dict).caSecret }}
volumes:
  - name: mariadb-tls
    secret:
      secretName: {{ . | quote }}
      items:
        - key: ca.crt
          path: ca.crt
{{- end }}
{{- end -}}

{{/* extraEnv (a map) as env entries. */}}
{{- define "sf.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by the control-plane pods. */}}
{{- define "sf.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The control-plane containers' security context (they need no privilege). */}}
{{- define "sf.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* Refuses settings the daemons would refuse at start, which the schema cannot say. */}}
{{- define "sf.validate" -}}
{{- if eq (int .Values.database.port) (int .Values.database.metricsPort) -}}
{{- fail "database.port and database.metricsPort must differ (sf-database serves gRPC and metrics on separate ports)" -}}
{{- end -}}
{{- end -}}
