{{- define "retention.gitSyncContainer" -}}
{{- $v := .root.Values.gitSync -}}
image: "{{ $v.image.repository }}:{{ $v.image.tag }}"
args:
  - --repo={{ required "gitSync.repo is required when gitSync.enabled" $v.repo }}
  - --ref={{ $v.ref }}
  - --root=/git
  - --link=current
  - --period={{ $v.period }}
  {{- if .oneTime }}
  - --one-time
  {{- end }}
{{- with $v.existingSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
volumeMounts:
  - name: git
    mountPath: /git
  - name: tmp
    mountPath: /tmp
{{- end -}}
