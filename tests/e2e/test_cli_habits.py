"""kubectl's habits in `mmgw` (issue 17, item 5): --version, exit status 1 on usage errors,
-o name|wide|jsonpath, --no-headers, -l, apply -f DIR (-R) and --wait, delete -f,
describe with events, get -w (and a watch whose server goes away), completion."""

from __future__ import annotations

import http.server
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .cli_helpers import CLI, KIND, isvc_yaml, mmgw
from .conftest import ROOT


def labelled(name: str, **labels: str) -> str:
    text = isvc_yaml(name)
    block = "".join(f"    {k}: {v}\n" for k, v in labels.items())
    return text.replace(
        "  namespace: modelmesh-serving\n", f"  namespace: modelmesh-serving\n  labels:\n{block}"
    )


def test_version_usage_errors_and_completion() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert version.returncode == 0 and version.stdout.strip() == "mmgw 0.1.0"
    for args in (("get",), ("get", "gadgets"), ("apply",), ("frobnicate",)):
        result = mmgw(*args, server="http://127.0.0.1:1")
        assert result.returncode == 1, args  # kubectl's status for a usage error, not 2
        assert "error: " in result.stderr and "Traceback" not in result.stderr
    script = subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=True,
    ).stdout
    completed = subprocess.run(
        [
            "bash",
            "-c",
            script + '\nCOMP_WORDS=(mmgw des); COMP_CWORD=1; _mmgw; echo "${COMPREPLY[@]}"'
            '\nCOMP_WORDS=(mmgw get isvc --no); COMP_CWORD=3; _mmgw; echo "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    assert completed == ["describe", "--no-headers"]
    zsh = subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", "completion", "zsh"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef mmgw")


def test_output_formats_headers_and_selectors(cli: CLI) -> None:
    cli.names |= {"cli-lab-a", "cli-lab-b"}
    cli.ok(
        "apply",
        "-f",
        "-",
        stdin=labelled("cli-lab-a", team="a", tier="prod")
        + "---\n"
        + labelled("cli-lab-b", team="b"),
    )
    cli.wait_ready("cli-lab-a", "cli-lab-b")
    assert cli.ok("get", "isvc", "-l", "team=a", "-o", "name") == f"{KIND}/cli-lab-a\n"
    assert cli.ok("get", "isvc", "-l", "team in (a,b),!tier", "-o", "name") == f"{KIND}/cli-lab-b\n"
    assert cli.ok("get", "isvc", "-l", "team=nobody") == ""
    names = cli.ok("get", "isvc", "-l", "team", "-o", "jsonpath={.items[*].metadata.name}")
    assert names.split() == ["cli-lab-a", "cli-lab-b"]
    url = cli.ok("get", "isvc", "cli-lab-a", "-o", "jsonpath={.status.url}")
    assert url.strip() == f"{cli.deployment.url}/v2/models/cli-lab-a"
    wide = cli.ok("get", "isvc", "cli-lab-a", "-o", "wide").splitlines()
    assert wide[0].split()[-4:] == ["REASON", "ACTIVEMODEL", "TRANSITION", "COPIES"]
    assert wide[1].split()[-3:] == ["Loaded", "UpToDate", "1"]
    bare = cli.ok("get", "isvc", "cli-lab-a", "--no-headers").splitlines()
    assert len(bare) == 1 and bare[0].startswith("cli-lab-a ")
    assert "unable to match a printer" in cli.refused("get", "isvc", "-o", "tabel")
    assert "error parsing jsonpath" in cli.refused("get", "isvc", "-o", "jsonpath={.items[0")
    assert "unable to parse requirement" in cli.refused("get", "isvc", "-l", "team in a")
    assert "no name to print" in cli.refused("get", "placement", "-o", "name")
    pods = cli.ok("get", "placement", "-o", "jsonpath={range .pods[*]}{.pod}{'\\n'}{end}")
    assert sorted(pods.split()) == sorted(cli.deployment.ports.pod_addresses)


def test_apply_a_folder_wait_describe_and_delete_by_file(cli: CLI, tmp_path: Path) -> None:
    cli.names |= {"cli-dir-a", "cli-dir-b", "cli-dir-broken"}
    folder = tmp_path / "manifests"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.yaml").write_text(isvc_yaml("cli-dir-a"))
    (folder / "nested" / "b.yml").write_text(isvc_yaml("cli-dir-b"))
    (folder / "README.md").write_text("not a manifest\n")
    flat = cli("apply", "-f", str(folder))
    assert flat.returncode == 0 and flat.stdout == f"{KIND}/cli-dir-a created\n"
    assert f"skipped {folder / 'README.md'}: not a .yaml, .yml or .json file" in flat.stderr
    waited = cli("apply", "-f", str(folder), "-R", "--wait", "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.splitlines() == [
        f"{KIND}/cli-dir-a unchanged",
        f"{KIND}/cli-dir-b created",
        f"{KIND}/cli-dir-a condition met",
        f"{KIND}/cli-dir-b condition met",
    ]
    described = cli.ok("describe", "isvc", "cli-dir-b")
    print(described)
    assert described.startswith("Name:         cli-dir-b\nNamespace:    modelmesh-serving\n")
    assert "Conditions:" in described and "Ready" in described
    events = described[described.index("Events:") :]
    assert re.search(
        r"Normal +Loaded +\S+ +mmgw-gateway +cli-dir-b__isvc-\w+ loaded on pod", events
    )
    # a model that cannot load: --wait says so and exits 1
    broken = isvc_yaml("cli-dir-broken", "no/such/model.joblib")
    failed = cli("apply", "-f", "-", "--wait", "--timeout", "60", stdin=broken)
    assert failed.returncode == 1 and "failed to load" in failed.stderr, failed.stderr
    broken_events = cli.ok("describe", "isvc", "cli-dir-broken").split("Events:")[1]
    assert re.search(
        r"Warning +LoadFailed +\S+ +mmgw-gateway +.*model file not found", broken_events
    )
    deleted = cli.ok("delete", "-f", str(folder), "-R")
    assert deleted.splitlines() == [f'{KIND} "cli-dir-a" deleted', f'{KIND} "cli-dir-b" deleted']
    assert "NotFound" in cli.refused("delete", "-f", str(folder / "a.yaml"))
    assert "not both" in cli.refused("delete", "isvc", "x", "-f", str(folder / "a.yaml"))


def test_get_watch_prints_changes_until_interrupted(cli: CLI) -> None:
    cli.names.add("cli-watched")
    watch = subprocess.Popen(
        [sys.executable, "-m", "gateway.tools.cli", "get", "isvc", "-w", "--server", cli.server],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert watch.stdout is not None
        assert watch.stdout.readline().split()[0] == "NAME"
        cli.ok("apply", "-f", "-", stdin=isvc_yaml("cli-watched"))
        seen = []
        deadline = time.monotonic() + 60
        while not any(line.startswith("cli-watched") and " True " in line for line in seen):
            assert time.monotonic() < deadline, seen
            seen.append(watch.stdout.readline())
        assert not any(line.split()[0] == "NAME" for line in seen)  # rows only, no new header
    finally:
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 130


class _OneList(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"items": []}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_watch_whose_server_goes_away_ends_with_status_1() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OneList)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    watch = subprocess.Popen(
        [sys.executable, "-m", "gateway.tools.cli", "get", "isvc", "-w", "--server", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        time.sleep(2)  # the watch has looked at least once
        server.shutdown()
        server.server_close()
        _, stderr = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 1
    assert "does not answer; trying again" in stderr and "error: watch ended" in stderr
