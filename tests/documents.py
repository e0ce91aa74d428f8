"""The seed documents' resources, as the tests apply them."""

from __future__ import annotations

from typing import Any

# The seed's InferenceService (sklearn-mnist on the PVC my-models-pvc).
SEED_ISVC: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {
        "name": "sklearn-mnist",
        "namespace": "modelmesh-serving",
        "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"},
    },
    "spec": {
        "predictor": {
            "model": {
                "modelFormat": {"name": "sklearn"},
                "storage": {
                    "parameters": {"type": "pvc", "name": "my-models-pvc"},
                    "path": "mnist-svm.joblib",
                },
            }
        }
    },
}

# The seed's ServingRuntime for the PEFT model (abridged: its image is not pulled here).
SEED_RUNTIME: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1alpha1",
    "kind": "ServingRuntime",
    "metadata": {"name": "peft-model-server", "namespace": "modelmesh-serving"},
    "spec": {
        "supportedModelFormats": [{"name": "peft-model", "version": "1", "autoSelect": True}],
        "multiModel": True,
        "grpcDataEndpoint": "port:8001",
        "grpcEndpoint": "port:8085",
        "containers": [
            {
                "name": "mlserver",
                "image": "registry.example/peft-model-server:latest",
                "env": [
                    {
                        "name": "MLSERVER_MODEL_IMPLEMENTATION",
                        "value": "peft_model_server.PeftModelServer",
                    }
                ],
                "resources": {
                    "requests": {"cpu": "500m", "memory": "4Gi"},
                    "limits": {"cpu": "5", "memory": "5Gi"},
                },
            }
        ],
        "builtInAdapter": {
            "serverType": "mlserver",
            "runtimeManagementPort": 8001,
            "memBufferBytes": 134217728,
            "modelLoadingTimeoutMillis": 90000,
        },
    },
}
