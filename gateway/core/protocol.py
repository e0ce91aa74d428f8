"""Protocol constants shared by the gateway, the pods, envoy/envoy.yaml and istio/.

envoy/envoy.yaml and the istio EnvoyFilters name this module where they use
these values; change them together.
"""

from __future__ import annotations

# Header ext_proc sets to the pods for a request, "host:port" of the chosen
# copy first, the model's other copies after it, comma-separated. Envoy's
# override_host load balancing policy (cluster "pods") reads it, and a retry
# goes to the next. It is not an x-envoy-* header, so ext_proc may set it
# without mutation_rules.allow_envoy, and it always overwrites a client's value.
UPSTREAM_HEADER = "x-mmgw-upstream"

# The version (concrete id) of an InferenceService that served an answer: Envoy adds it to
# every answer from a pod (the mm-model-id ext_proc chose). A request that carries it is
# served by that version while the name still has it: pinning, and sticky variants.
VARIANT_HEADER = "x-mmgw-variant"

# A copy of a request for an Experiment's mirror (shadow traffic). ext_proc names the
# Envoy cluster to mirror to in SHADOW_CLUSTER_HEADER (the routes' request_mirror_policies
# read it; a client's own value is always removed), the mirror's pods and concrete id in
# the other two; Envoy's mirror policy moves them into UPSTREAM_HEADER and MODEL_ID_HEADER
# of the copy only. The copy's answer is discarded.
SHADOW_CLUSTER_HEADER = "x-mmgw-shadow"
SHADOW_UPSTREAM_HEADER = "x-mmgw-shadow-upstream"
SHADOW_MODEL_HEADER = "x-mmgw-shadow-model-id"
# the Envoy clusters a copy goes to, by the request's wire form: envoy/envoy.yaml's names
# (GatewaySettings.shadow_clusters gives others, as Istio's ingress gateway names them)
SHADOW_CLUSTERS = {"grpc": "pods", "oip": "pods_rest"}

# An InferenceService's own per-try timeout (ms), set by ext_proc for Envoy's router:
# after it, the try is abandoned and the request retried on the model's next copy. An
# x-envoy-* header, so ext_proc's mutation_rules.allow_envoy lets it set it; Envoy
# removes a client's own value (use_remote_address: every client is external).
PER_TRY_TIMEOUT_HEADER = "x-envoy-upstream-rq-per-try-timeout-ms"

# Which V2 REST form a request is in, set by Envoy's Lua filter from the request itself
# (envoy/envoy.yaml) and always overwritten there: REST_FORM_OIP for the Open Inference
# Protocol's JSON ("data", the binary extension, and every GET), which goes to the pod's
# REST listener; absent for the protobuf-JSON form, which the transcoder turns into gRPC.
REST_FORM_HEADER = "x-mmgw-form"
REST_FORM_OIP = "oip"

# Set by ext_proc when the chosen pod's data plane picks the model by the request's own
# name, not by MODEL_ID_HEADER (a real MLServer: gateway.pod.mlserver): Envoy's filter
# name_the_model (envoy/envoy.yaml) then writes the concrete id (MODEL_ID_HEADER) into
# field 1 of the gRPC message, or into the REST path. A client's own value is removed.
NAME_IN_REQUEST_HEADER = "x-mmgw-name-in-request"
NAME_IN_REQUEST = "model-id"

# The request's id: Envoy keeps a client's own or makes one (envoy.yaml's
# preserve_external_request_id), passes it to ext_proc and the pod, and returns it in the
# answer. The gateway's and the pods' log lines for a request name it.
REQUEST_ID_HEADER = "x-request-id"

# ModelMesh's model-id headers. A native gRPC client may send either; the
# gateway always sets MODEL_ID_HEADER to the concrete id on the way to a pod,
# and the pod serves the model that header names.
VMODEL_ID_HEADER = "mm-vmodel-id"
MODEL_ID_HEADER = "mm-model-id"

# The KServe V2 gRPC service and the REST prefix the transcoder serves.
GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_PREFIX = f"/{GRPC_SERVICE}/"
REST_PREFIX = "/v2"

# gRPC methods that name a model (field 1 of the request in every case) and
# those that address the server as a whole.
MODEL_METHODS = frozenset({"ModelInfer", "ModelReady", "ModelMetadata"})
SERVER_METHODS = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})

GRPC_CONTENT_TYPE = "application/grpc"
JSON_CONTENT_TYPE = "application/json"

# The version a pod reports for every model (a pod holds one version of a concrete model):
# OIP metadata's "versions", answers' "model_version", the repository index's "version".
MODEL_VERSION = "1"

# InferenceService -> concrete model id, as ModelMesh names them.
CONCRETE_ID_SEPARATOR = "__isvc-"

# Where the shared store keeps each InferenceService (gateway.control.records.Record,
# by name): gateway replicas mirror it, and a pod reads it to load a registered model it
# was sent without holding a copy (gateway.pod.on_demand).
INFERENCE_SERVICES_PREFIX = "inferenceservices/"

# An adapter's load names the base model it attaches to in its key (ModelConfig.key, JSON):
# {"base_model_id": "<the base's concrete id>"}; the pod must hold that base.
BASE_MODEL_KEY = "base_model_id"

# The OpenAI-compatible API on :8008: these POST paths name their model in the JSON body's
# "model" field, which Envoy's json_to_metadata filter puts in the request's dynamic
# metadata (namespace OPENAI_METADATA, key "model") for ext_proc, the body staying in Envoy.
OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
OPENAI_METADATA = "mmgw.openai"
# The model formats whose models generate text, served by the OpenAI-compatible API and
# listed by GET /v1/models: a base language model and an adapter over one.
TEXT_FORMATS = frozenset({"peft-model", "lora"})
