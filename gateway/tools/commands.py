"""`mmgw apply | get | describe | delete | rollout`: the resource commands, kubectl's way.

Each takes the parsed arguments and returns the exit status; a CliError (printed by
gateway.tools.cli as ``error: ...``) is exit status 1, as kubectl's errors are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from gateway.tools import describe, printers, selectors
from gateway.tools.client import KINDS, Client, CliError, check_name, documents, kind_of

WATCH_INTERVAL = 1.0  # seconds between a watch's looks
WATCH_RECONNECT = 5.0  # how long a watch tries again when the server does not answer


def cmd_apply(args: argparse.Namespace) -> int:
    client = Client(args.server, args.namespace, args.token)
    docs = list(documents(args.filename, recursive=args.recursive))
    if not docs:
        raise CliError("no objects passed to apply")
    failed = 0
    # Runtimes first, so that the InferenceServices of the same files find them.
    docs.sort(
        key=lambda d: (
            KINDS[d[1]["kind"]][1] if isinstance(d[1], dict) and d[1].get("kind") in KINDS else 9
        )
    )
    applied: list[str] = []
    for path, doc in docs:
        metadata = doc.get("metadata") if isinstance(doc, dict) else None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind not in KINDS or name is None:
            what = " ".join(str(part) for part in (kind or "a document", name) if part is not None)
            print(
                f"error: {path}: {what}: only InferenceService (serving.kserve.io/v1beta1), ServingRuntime "
                "and ClusterServingRuntime (serving.kserve.io/v1alpha1) and Experiment "
                "(mlops.seldon.io/v1alpha1) with metadata.name can be applied",
                file=sys.stderr,
            )
            failed += 1
            continue
        printed = KINDS[kind][0]
        try:
            response = client.request("PUT", client.path(kind, check_name(name, kind)), json=doc)
        except CliError as exc:
            print(f"error: {printed}/{name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{printed}/{name} {response.headers.get('mmgw-apply-result', 'configured')}")
        if kind == "InferenceService":
            applied.append(name)
    if args.wait and applied:
        failed += _wait_ready(client, applied, args.timeout)
    return 1 if failed else 0


def _wait_ready(client: Client, names: list[str], timeout: float) -> int:
    """Wait until each InferenceService is Ready, printing each one's progress on stderr
    as it changes; the number that failed to load or were not ready in time."""
    printed = KINDS["InferenceService"][0]
    deadline = time.monotonic() + timeout
    waiting, seen, failed = set(names), dict[str, str](), 0
    while waiting:
        for name in sorted(waiting):
            status = client.request("GET", client.path("InferenceService", name)).json()["status"]
            ready, reason = printers.ready_of(status)
            state = status.get("modelStatus", {}).get("states", {}).get("activeModelState", "")
            progress = f"{state or 'Pending'}" + (f" ({reason})" if reason else "")
            if seen.get(name) != progress and ready != "True":
                print(f"waiting for {printed}/{name}: {progress}", file=sys.stderr)
                seen[name] = progress
            if ready == "True":
                print(f"{printed}/{name} condition met")
                waiting.discard(name)
            elif reason == "ModelLoadFailed":
                message = status["conditions"][0].get("message", "")
                print(f"error: {printed}/{name} failed to load: {message}", file=sys.stderr)
                waiting.discard(name)
                failed += 1
        if waiting and time.monotonic() > deadline:
            for name in sorted(waiting):
                print(
                    f"error: timed out waiting for {printed}/{name} to be ready ({timeout:g} s)",
                    file=sys.stderr,
                )
            return failed + len(waiting)
        if waiting:
            time.sleep(0.2)
    return failed


def cmd_get(args: argparse.Namespace) -> int:
    client = Client(args.server, args.namespace, args.token)
    output = printers.check_output(args.output)
    match = selectors.parse(args.selector) if args.selector else None
    if args.resource == "placement":
        return _get_placement(client, args, output)
    kind = kind_of(args.resource)
    if args.name and match is not None:
        raise CliError("a name and a label selector (-l) cannot be given together")
    single = args.name is not None
    fetch = _fetcher(client, kind, args.name, match)
    items = fetch()
    if not items and not single and output in ("table", "wide") and not args.watch:
        where = "" if kind == "ClusterServingRuntime" else f" in {args.namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    if items or single:
        print(printers.render(kind, items, single=single, output=output, headers=args.headers))
    if args.watch:
        _watch(fetch, kind, output, items)
    return 0


def _fetcher(
    client: Client, kind: str, name: str | None, match: Callable[[selectors.Labels], bool] | None
) -> Callable[[], list[dict[str, Any]]]:
    def fetch() -> list[dict[str, Any]]:
        if name is not None:
            return [client.request("GET", client.path(kind, check_name(name, kind))).json()]
        items: list[dict[str, Any]] = client.request("GET", client.path(kind)).json()["items"]
        return [i for i in items if match is None or match(selectors.labels_of(i))]

    return fetch


def _watch(
    fetch: Callable[[], list[dict[str, Any]]],
    kind: str,
    output: str,
    items: list[dict[str, Any]],
) -> None:
    """Print each object again when it changes (its row, without the header), until
    interrupted; CliError when the server stops answering for WATCH_RECONNECT seconds."""
    last = {item["metadata"]["name"]: _watched(item) for item in items}
    lost_at: float | None = None
    while True:
        sys.stdout.flush()
        time.sleep(WATCH_INTERVAL)
        try:
            items = fetch()
        except CliError as exc:
            if "cannot reach" not in str(exc):
                raise
            now = time.monotonic()
            if lost_at is None:
                lost_at = now
                print("the management API does not answer; trying again", file=sys.stderr)
            if now - lost_at > WATCH_RECONNECT:
                raise CliError(f"watch ended: {exc}") from None
            continue
        lost_at = None
        for item in items:
            name, state = item["metadata"]["name"], _watched(item)
            if last.get(name) != state:
                last[name] = state
                print(printers.render(kind, [item], single=True, output=output, headers=False))


def _watched(item: dict[str, Any]) -> str:
    """What a watch compares: the object without the per-request figures."""
    status = {k: v for k, v in item.get("status", {}).items() if k != "served"}
    return json.dumps({**item, "status": status}, sort_keys=True)


def _get_placement(client: Client, args: argparse.Namespace, output: str) -> int:
    if args.name:
        raise CliError("get placement takes no name")
    if output == "name":
        raise CliError("the placement has no name to print: use -o json, yaml or jsonpath=...")
    data = client.request("GET", "/v1/placement").json()
    if output == "json":
        print(json.dumps(data, indent=2))
    elif output == "yaml" or output.startswith("jsonpath="):
        print(printers.render("placement", [data], single=True, output=output))
    else:
        print(printers.placement_table(data))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    client = Client(args.server, args.namespace, args.token)
    kind = kind_of(args.resource)
    name = check_name(args.name, kind)
    item = client.request("GET", client.path(kind, name)).json()
    events: list[dict[str, Any]] = []
    if kind == "InferenceService":
        events = client.request(
            "GET",
            client.events,
            params={"fieldSelector": f"involvedObject.name={name}"},
        ).json()["items"]
    print(describe.render(item, events))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    client = Client(args.server, args.namespace, args.token)
    if args.filename:
        if args.resource or args.name:
            raise CliError("delete takes either -f FILE or a resource and a name, not both")
        targets = []
        for path, doc in documents(args.filename, recursive=args.recursive):
            kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
            if kind not in KINDS or not isinstance(name, str):
                raise CliError(
                    f"{path}: {kind or 'a document'} {name or ''}: not a resource mmgw knows"
                )
            targets.append((kind, name))
    else:
        if not args.resource or not args.name:
            raise CliError("delete needs a resource and a name (delete isvc NAME) or -f FILE")
        targets = [(kind_of(args.resource), args.name)]
    failed = 0
    for kind, name in sorted(targets, key=lambda t: -KINDS[t[0]][1]):  # Experiments first
        try:
            client.request("DELETE", client.path(kind, check_name(name, kind)))
        except CliError as exc:
            print(str(exc) if str(exc).startswith("Error") else f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f'{KINDS[kind][0]} "{name}" deleted')
    return 1 if failed else 0


def cmd_rollout(args: argparse.Namespace) -> int:
    """`mmgw rollout undo isvc NAME`: back to the spec rolled out before (or, while a rollout
    or canary is under way, to the one rolled out now), as `kubectl rollout undo`."""
    client = Client(args.server, args.namespace, args.token)
    name = check_name(args.name)
    client.request("POST", f"{client.isvc(name)}/rollback")
    print(f"{KINDS['InferenceService'][0]}/{name} rolled back")
    return 0
