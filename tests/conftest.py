"""Test-session settings that must precede any import of grpc."""

import os

# grpc's C core logs connection events (GOAWAY on a pod's shutdown, ...) at INFO.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# The test process uses grpc and forks the processes it starts (gateway.tools.launcher):
# with fork support on, grpc restarts its poller in the child between fork and
# exec, where the poller's epoll descriptor is already closed, and the child
# aborts (grpc/grpc#43055). The children exec at once; they need none of it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
