"""YAML documents as users write them (``mmgw apply -f``), with YAML's aliases bounded.

An alias is a reference: a few hundred bytes of nested anchors can name 10^9 nodes,
which would be expanded when the document is sent as JSON (a "billion laughs" file).
As Kubernetes refuses documents with excessive aliasing, ``load_all`` counts every node
each document expands to, aliases included, and refuses one past ``MAX_NODES`` before
anything is expanded or sent. A real InferenceService or ServingRuntime has a few hundred.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_NODES = 100_000
# The most one request to the management API may carry, as Kubernetes' API server allows
# (3 MiB); the CLI reads no more of a file than that either.
MAX_BYTES = 3 * 1024 * 1024


class TooManyNodes(ValueError):
    pass


def load_all(text: str, *, max_nodes: int = MAX_NODES) -> list[Any]:
    """The documents of ``text``; TooManyNodes for one whose aliases expand past ``max_nodes``
    (yaml.YAMLError for text that is not YAML)."""
    documents = list(yaml.safe_load_all(text))
    for index, document in enumerate(documents):
        if _expanded_nodes(document, max_nodes) > max_nodes:
            raise TooManyNodes(
                f"document {index + 1} expands to more than {max_nodes:,} nodes through its "
                "aliases (*name): write it out, or apply it in parts"
            )
    return documents


def _expanded_nodes(document: Any, limit: int) -> int:
    """How many nodes ``document`` has with every alias expanded, counting up to ``limit``+1.

    Aliased nodes are one Python object reached by several paths; each path counts, as it
    would in the JSON sent. Stops counting past the limit, so a bomb costs ``limit`` steps.
    """
    count = 0
    pending = [document]
    while pending:
        node = pending.pop()
        count += 1
        if count > limit:
            break
        if isinstance(node, dict):
            pending.extend(node.keys())
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return count
