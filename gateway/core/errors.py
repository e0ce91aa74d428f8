"""Transport-neutral errors of the core.

Each adapter owns one table that maps these to its wire: gRPC status codes
(gateway.pod.server, gateway.adapters.podclient), HTTP statuses (gateway.adapters.api.routes) or an
ext_proc immediate response (gateway.adapters.extproc.processor). Anything else that escapes the
core is reported as a generic internal error, without a stack trace on the wire.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the core raises on purpose; the message is for users."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidSpec(GatewayError):
    """A resource document (InferenceService, ...) is malformed or unsupported."""


class StorageError(InvalidSpec):
    """A storage reference is malformed, unknown (PVC, storage key) or points outside its storage root."""


class ModelNotFound(GatewayError):
    """No model is registered (or, on a pod, loaded) under that name."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"model '{name}' is not registered")
        self.name = name


class InvalidInput(GatewayError):
    """An inference request does not fit the model (datatype, shape, ...)."""


class UnknownRoute(GatewayError):
    """A path or gRPC method the gateway does not serve."""

    def __init__(self, message: str, *, grpc: bool = False) -> None:
        super().__init__(message)
        self.grpc = grpc


class NoCapacity(GatewayError):
    """No pod can hold the model, even after eviction."""


class PodFull(GatewayError):
    """A pod refused a load for lack of room: its memory was promised elsewhere (another
    gateway replica's load) since the engine last saw it. The engine tries another pod."""


class Unavailable(GatewayError):
    """No pod is available right now; a retry later may succeed."""


class PodUnresponsive(Unavailable):
    """A pod's connection is up but it did not answer in time: busy, or hung (stopped,
    swapping). Unlike a refused connection, not yet a sign that it is gone."""


class StoreUnavailable(Unavailable):
    """The shared store cannot be reached (etcd is down): writes and loads wait for it."""


class LoadFailed(GatewayError):
    """Loading the model failed on every pod tried."""


class LoadTimeout(LoadFailed):
    """A load did not finish within the runtime's loading timeout."""


class StorageFailure(LoadFailed):
    """The model's storage did not give its files (an endpoint that cannot be reached, ...)."""


class ModelNotInStorage(StorageFailure):
    """No model file, object or bucket where the storage reference points."""


class StorageAccessDenied(StorageFailure):
    """The storage refused to give the model: bad credentials, no permission, an unreadable file."""


class ModelFormatError(LoadFailed):
    """The model file could be opened but no runtime can read it."""


class PredictFailed(GatewayError):
    """The runtime raised while predicting; the pod goes on serving."""
