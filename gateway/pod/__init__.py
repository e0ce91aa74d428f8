"""The runtime pod: a process that loads models and serves them over KServe V2 gRPC.

Layers, inner to outer:

- ``datatypes``, ``model``: V2 datatypes, the tensor and metadata types, and the
  ``Model`` extension point every runtime implements (no protobuf, no grpc);
- ``runtimes``: the runtime registry (model type -> ``Model`` class) and the
  built-in runtimes (``runtimes.sklearn``; ``runtimes.synthetic``, models that
  only take memory and time, for scale tests);
- ``repository``: the models this pod holds; loads, unloads, coalescing,
  concurrency limit and timeout, requests in flight per model, graceful unload;
- ``tensors``: the codec between V2 protobuf messages and numpy;
- ``servicer``: the gRPC servicers and the one table from core errors to gRPC
  status codes;
- ``server``: ``PodSettings``, the ``PodServer`` that binds one port, ``serve``
  and ``main``.
"""
