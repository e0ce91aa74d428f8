"""ModelMesh Gateway: Envoy + ext_proc in front of a shared pool of model-serving pods."""

__version__ = "0.1.0"
