"""Test-session settings that must precede any import of grpc."""

import os

# grpc's C core logs connection events (GOAWAY on a pod's shutdown, ...) at INFO.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
