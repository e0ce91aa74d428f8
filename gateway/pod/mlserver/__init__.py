"""Pods whose models a real MLServer serves: the adapter beside it, as ModelMesh runs them.

A pod of a ServingRuntime whose ``builtInAdapter.serverType`` is ``mlserver`` (and
whose model class is MLServer's, not ours: gateway.pod.profile decides) runs two
processes, as a ModelMesh pod runs two containers:

- **MLServer** itself (``mlserver start``, multi-model, nothing loaded at start),
  from its own virtualenv (``make mlserver``: MLServer needs protobuf<7), with the
  runtime container's environment (``MLSERVER_MODEL_IMPLEMENTATION``, ``PYTHONPATH``,
  ...). It answers inference on its own gRPC and REST ports: Envoy sends requests
  there, and no request body passes through Python.
- **The adapter** (this package), which serves the model-runtime API the gateway's
  placement engine calls (load, unload, sizes, status). A load writes the model's
  folder under MLServer's models directory (``layout``: a ``model-settings.json``
  named after the concrete model id, generated as ModelMesh's MLServer adapter
  generates it, or the model's own settings with its name rewritten) and asks
  MLServer to load it (``RepositoryModelLoad``); an unload asks it to unload.

Locally the adapter starts MLServer on free loopback ports and restarts it when it dies
(``process.MLServerProcess``); in Kubernetes MLServer is the pod's other container and
the adapter only watches it (``process.MLServerSidecar``). While MLServer is down the
pod reports itself not ready: the gateway places its models elsewhere.

MLServer picks the model by the request's own name (field 1 of ModelInferRequest, the
REST path), not by mm-model-id. The pod says so in RuntimeStatus
(``model_named_in_request``), and Envoy's filter name_the_model writes the concrete id
there (envoy/envoy.yaml).
"""
