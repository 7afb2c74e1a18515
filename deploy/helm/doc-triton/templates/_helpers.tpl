{{/* Names: every object is "<release>-<part>"; the release name is cut so job names stay under 63. */}}
{{- define "doc-triton.fullname" -}}
{{- .Release.Name | trunc 30 | trimSuffix "-" -}}
{{- end -}}

{{- define "doc-triton.labels" -}}
app.kubernetes.io/name: doc-triton
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "doc-triton.selector" -}}
app.kubernetes.io/name: doc-triton
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The model settings: settings.yaml's defaults (generated from the .env keys) under the user's
     `settings`, every value a string. An unknown key or model stops the install in one sentence. */}}
{{- define "doc-triton.settings" -}}
{{- $defaults := (.Files.Get "settings.yaml" | fromYaml).settings -}}
{{- $merged := dict -}}
{{- range $key, $value := .Values.settings -}}
{{- if not (hasKey $defaults $key) -}}
{{- fail (printf "values: settings.%s is not a setting of this chart; the known keys (the same as .env's) are in settings.yaml" $key) -}}
{{- end -}}
{{- $_ := set $merged $key (toString $value) -}}
{{- end -}}
{{- range $key, $value := $defaults -}}
{{- if not (hasKey $merged $key) -}}{{- $_ := set $merged $key (toString $value) -}}{{- end -}}
{{- end -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* The builds of the models in settings.MODELS: each with its Job name, which carries a hash of
     everything the Job is given, so a changed setting makes a new Job (a Job's pod template is
     immutable) and the Triton pods wait for that Job's receipt, not an older one. */}}
{{- define "doc-triton.builds" -}}
{{- $settings := include "doc-triton.settings" . | fromYaml -}}
{{- $models := (.Files.Get "settings.yaml" | fromYaml).models -}}
{{- $wanted := splitList "," $settings.MODELS -}}
{{- $known := list -}}
{{- range $models -}}{{- $known = append $known .key -}}{{- end -}}
{{- range $wanted -}}
{{- if and . (not (has . $known)) -}}
{{- fail (printf "values: settings.MODELS names unknown model %q; choose from %s" . (join ", " $known)) -}}
{{- end -}}
{{- end -}}
{{- if not (has (toString .Values.gpu.device) (list "cuda" "cpu")) -}}
{{- fail (printf "values: gpu.device %q is not a device of this chart; choose cuda or cpu" (toString .Values.gpu.device)) -}}
{{- end -}}
{{- if eq $settings.PRECISION "fp8" -}}
{{- fail "values: settings.PRECISION fp8 runs only in the local stack's compiled path; the chart builds TensorRT engines (GPU) or ONNX Runtime runners (CPU), so use fp16 or fp32" -}}
{{- end -}}
{{- $cuda := include "doc-triton.cuda" . -}}
{{- $builds := list -}}
{{- range $models -}}
{{- if has .key $wanted -}}
{{- /* the one builder contract (triton_models/builder_contract.py), as settings.yaml carries it */ -}}
{{- $device := ternary "cuda" "cpu" (eq $cuda "true") -}}
{{- $env := dict "SERVE_BACKEND" (index .serveBackend $device) "DEVICE" $device -}}
{{- range $variable, $key := .builderSettings -}}{{- $_ := set $env $variable (index $settings $key) -}}{{- end -}}
{{- /* everything in the Job's spec: a Job is immutable, so any change must make a new one */ -}}
{{- $hash := dict "image" $.Values.images "env" $env "model" .key "builds" $.Values.builds "gpu" $.Values.gpu
      "checkpoints" $.Values.checkpoints "placement" (include "doc-triton.placement" $) | toJson | sha256sum | trunc 8 -}}
{{- $name := printf "%s-%s-%s" (include "doc-triton.fullname" $) .job $hash -}}
{{- $builds = append $builds (dict "key" .key "job" $name "env" $env "tritonNames" .tritonNames) -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "builds" $builds) -}}
{{- end -}}

{{/* "true" where the builds run and serve on the GPU: gpu.enabled with gpu.device cuda (gpu.device
     cpu requests gpu.resource but builds the CPU profile). */}}
{{- define "doc-triton.cuda" -}}
{{- if and .Values.gpu.enabled (eq (toString .Values.gpu.device) "cuda") }}true{{ end -}}
{{- end -}}

{{/* "true" where every current builder Job has succeeded, read from the cluster with `lookup` at
     install time (it finds nothing under `helm template` or a client dry run). */}}
{{- define "doc-triton.built" -}}
{{- $built := true -}}
{{- range (include "doc-triton.builds" . | fromYaml).builds -}}
{{- $job := lookup "batch/v1" "Job" $.Release.Namespace .job -}}
{{- if lt (int (dig "status" "succeeded" 0 $job)) 1 -}}{{- $built = false -}}{{- end -}}
{{- end -}}
{{- if $built }}true{{ end -}}
{{- end -}}

{{/* The claim is mounted by every builder Job, Triton replica and the test pod, often at the same
     time: ReadWriteMany, or ReadWriteOnce where persistence.singleNode says all pods share a node. */}}
{{- define "doc-triton.checkStorage" -}}
{{- $modes := .Values.persistence.accessModes | default list -}}
{{- if kindIs "string" $modes }}{{ $modes = list $modes }}{{ end -}}
{{- if not (or (has "ReadWriteMany" $modes) (and (has "ReadWriteOnce" $modes) .Values.persistence.singleNode)) -}}
{{- fail (printf "values: persistence.accessModes %s does not let the builder Jobs, the Triton replicas and the test pod mount the claim from several nodes (pods on another node hang on Multi-Attach), so set persistence.accessModes to [ReadWriteMany] with a storage class that provides it, or to [ReadWriteOnce] with persistence.singleNode=true where every pod runs on one node" (printf "[%s]" (join ", " $modes))) -}}
{{- end -}}
{{- end -}}

{{- define "doc-triton.tritonNames" -}}
{{- $names := list -}}
{{- range (include "doc-triton.builds" . | fromYaml).builds -}}{{- $names = concat $names .tritonNames -}}{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{- define "doc-triton.claim" -}}
{{- include "doc-triton.fullname" . -}}-models
{{- end -}}

{{- define "doc-triton.service" -}}
{{- include "doc-triton.fullname" . -}}-triton
{{- end -}}

{{/* Node placement: the GPU pool's selector and tolerations where GPUs are on. */}}
{{- define "doc-triton.placement" -}}
{{- $selector := merge (deepCopy .Values.nodeSelector) (ternary .Values.gpu.nodeSelector dict .Values.gpu.enabled) -}}
{{- $tolerations := concat .Values.tolerations (ternary .Values.gpu.tolerations list .Values.gpu.enabled) -}}
{{- $placement := dict -}}
{{- with $selector }}{{ $_ := set $placement "nodeSelector" . }}{{ end -}}
{{- with $tolerations }}{{ $_ := set $placement "tolerations" . }}{{ end -}}
{{- with $placement }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* The OpenAI-compatible embeddings endpoint: rendered ("true") where embeddings.enabled and its
     model, e5_small_v2, is in settings.MODELS; empty otherwise. */}}
{{- define "doc-triton.embeddings.enabled" -}}
{{- $settings := include "doc-triton.settings" . | fromYaml -}}
{{- if and .Values.embeddings.enabled (has "e5_small_v2" (splitList "," $settings.MODELS)) -}}true{{- end -}}
{{- end -}}

{{- define "doc-triton.embeddings" -}}
{{- include "doc-triton.fullname" . -}}-embeddings
{{- end -}}

{{/* host:port of a Service from inside a pod's shell: its injected address (clusters without DNS),
     else its name. Called with (list serviceName port). */}}
{{- define "doc-triton.serviceAddress" -}}
{{- $service := index . 0 -}}
${{ printf "{%s_SERVICE_HOST:-%s}" ($service | upper | replace "-" "_") $service }}:{{ index . 1 }}
{{- end -}}
