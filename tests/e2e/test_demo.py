"""``mmgw demo`` as a user runs it: a subprocess on free ports, the printed curl, Ctrl-C/SIGTERM."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.tools import cli, launcher

from .conftest import seed_body

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0  # each child gets SIGTERM, then SIGKILL after 10 s


# -- processes, from /proc ------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int  # clock ticks after boot: tells a reused pid apart
    cmdline: str


def _proc(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) of a live process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19]), fields[0]


def _processes() -> dict[int, tuple[int, int, str]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _proc(int(entry.name))) is not None:
            found[int(entry.name)] = info
    return found


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def started_by(root: int, marker: str) -> set[Proc]:
    """Every live descendant of ``root``, and every process whose command line has ``marker``."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    found |= {pid for pid in table if pid != root and marker in _cmdline(pid)}
    return {Proc(pid, table[pid][1], _cmdline(pid)) for pid in found}


def alive(proc: Proc) -> bool:
    info = _proc(proc.pid)
    return info is not None and info[1] == proc.start and info[2] not in ("Z", "X")


# -- the demo as a subprocess ---------------------------------------------


class Demo:
    def __init__(self, data_dir: Path, ports: launcher.Ports, *options: str) -> None:
        self.data_dir = data_dir
        self.ports = ports
        argv = [
            sys.executable,
            "-m",
            "gateway.tools.cli",
            "demo",
            "--data-dir",
            str(data_dir),
            "--port",
            str(ports.envoy),
            "--admin-port",
            str(ports.envoy_admin),
            "--api-port",
            str(ports.api),
            "--extproc-port",
            str(ports.extproc),
            "--pod-ports",
            *map(str, ports.pods),
            "--pod-rest-ports",
            *map(str, ports.pod_rest),
            *options,
        ]
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._stderr: str | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, predicate, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no such line after {timeout:g} s; output so far: {self.lines}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"the demo ended ({self.popen.wait()}): {self.lines} {self.stderr()}"
                )
            self.lines.append(line)
            if predicate(line):
                return line

    def stop(self, sig: int) -> int:
        """Send ``sig``, wait for the exit status, and read the rest of stdout."""
        self.popen.send_signal(sig)
        status = self.popen.wait(STOP_TIMEOUT)
        while (
            line := self._queue.get(timeout=10)
        ) is not None:  # EOF: the children never had stdout
            self.lines.append(line)
        return status

    def stderr(self) -> str:
        """What the demo wrote to stderr, once it has exited."""
        if self._stderr is None and self.popen.poll() is not None and self.popen.stderr is not None:
            self._stderr = self.popen.stderr.read()
        return self._stderr or ""

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path / "demo", launcher.Ports.free())
    try:
        yield running
    finally:
        running.kill()  # only when a test failed before stopping it; children die with it


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "ctrl-c"])
def test_demo_serves_the_seed_curl_and_stops_everything(demo: Demo, sig: signal.Signals) -> None:
    demo.wait_for_line(lambda line: line == "sklearn-mnist is ready", READY_TIMEOUT)
    curl = demo.wait_for_line(lambda line: line.strip().startswith("curl -X POST"), 5).strip()
    argv = shlex.split(curl)
    assert f"http://127.0.0.1:{demo.ports.envoy}/v2/models/sklearn-mnist/infer" in argv
    result = subprocess.run([*argv, "-sS"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert '"int64Contents":["8"]' in result.stdout
    oip = demo.wait_for_line(lambda line: '"data": [' in line, 5).strip()
    result = subprocess.run([*shlex.split(oip), "-sS"], capture_output=True, text=True, timeout=30)
    assert '"outputs":[{"name":"predict","datatype":"INT64","shape":[1,1],"data":[8]}]' in (
        result.stdout
    )

    children = started_by(demo.popen.pid, str(demo.data_dir))
    names = " | ".join(child.cmdline for child in children)
    assert len(children) >= 2 + len(demo.ports.pods), names  # Envoy, the gateway, each pod
    assert "envoy" in names and " serve " in names and names.count(" pod ") == len(demo.ports.pods)

    started = time.monotonic()
    assert demo.stop(sig) == 0, demo.stderr()
    assert time.monotonic() - started < STOP_TIMEOUT
    assert demo.lines[-1].endswith("stopped every process")
    assert [child for child in children if alive(child)] == []
    for port in (demo.ports.envoy, demo.ports.api, *demo.ports.pods, *demo.ports.pod_rest):
        assert not launcher.listening(port)


def test_the_demo_runs_on_etcd_with_the_store_option(tmp_path: Path) -> None:
    with launcher.EtcdServer(tmp_path / "etcd") as etcd:
        running = Demo(tmp_path / "demo", launcher.Ports.free(), "--store", etcd.url)
        try:
            started = running.wait_for_line(
                lambda line: line.startswith("started Envoy"), READY_TIMEOUT
            )
            assert f"store {etcd.url}" in started
            running.wait_for_line(lambda line: line == "sklearn-mnist is ready", READY_TIMEOUT)
            answer = httpx.post(
                f"http://127.0.0.1:{running.ports.envoy}/v2/models/sklearn-mnist/infer",
                json=seed_body(),
                timeout=30,
            )
            assert answer.json()["outputs"][0]["contents"]["int64Contents"] == ["8"]
            assert running.stop(signal.SIGTERM) == 0, running.stderr()
        finally:
            running.kill()


@pytest.mark.parametrize("which", ["envoy", "api", "pod"])
def test_demo_refuses_a_taken_port(tmp_path: Path, which: str) -> None:
    ports = launcher.Ports.free()
    taken = {"envoy": ports.envoy, "api": ports.api, "pod": ports.pods[1]}[which]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        demo = Demo(tmp_path / "demo", ports)
        try:
            status = demo.popen.wait(60)
        finally:
            demo.kill()
        stderr = demo.stderr()
    assert status == 1
    assert f"port(s) {taken} (" in stderr and "already in use" in stderr
    assert not (tmp_path / "demo" / "logs").exists()  # nothing was started


def test_a_pod_that_dies_is_started_again_and_the_demo_goes_on(demo: Demo) -> None:
    """As Kubernetes restarts a pod's container: SIGKILL of a pod is logged, the pod comes back
    on its ports, and the seed's request is answered again (the model loads again on demand)."""
    demo.wait_for_line(lambda line: line == "sklearn-mnist is ready", READY_TIMEOUT)
    curl = shlex.split(
        demo.wait_for_line(lambda line: line.strip().startswith("curl -X POST"), 5).strip()
    )
    pods = [c for c in started_by(demo.popen.pid, str(demo.data_dir)) if " pod " in c.cmdline]
    victim = next(c for c in pods if f"--port {demo.ports.pods[0]} " in c.cmdline + " ")
    os.kill(victim.pid, signal.SIGKILL)
    line = demo.wait_for_line(lambda line: line.startswith("pod-0 exited with -9"), 10)
    assert line.endswith("starting it again")
    deadline = time.monotonic() + 60
    while not launcher.listening(demo.ports.pods[0]):
        assert time.monotonic() < deadline, "pod-0 did not come back"
        time.sleep(0.1)
    while True:
        result = subprocess.run([*curl, "-sS"], capture_output=True, text=True, timeout=30)
        if '"int64Contents":["8"]' in result.stdout:
            break
        assert time.monotonic() < deadline, result.stdout
        time.sleep(0.2)
    assert demo.popen.poll() is None  # still running
    assert demo.stop(signal.SIGTERM) == 0


def test_demo_refuses_a_port_given_twice(tmp_path: Path) -> None:
    ports = launcher.Ports.free()
    demo = Demo(
        tmp_path / "demo",
        launcher.Ports(
            ports.envoy, ports.envoy_admin, ports.envoy, ports.extproc, ports.pods, ports.pod_rest
        ),
    )
    assert demo.popen.wait(60) == 1
    assert f"port {ports.envoy} is given twice (Envoy, API)" in demo.stderr()


def test_demo_port_options_default_to_the_launchers_ports() -> None:
    args = cli.parser().parse_args(["demo"])
    defaults = launcher.Ports()
    assert (
        args.port,
        args.admin_port,
        args.api_port,
        args.extproc_port,
        tuple(args.pod_ports),
        tuple(args.pod_rest_ports),
    ) == (
        defaults.envoy,
        defaults.envoy_admin,
        defaults.api,
        defaults.extproc,
        defaults.pods,
        defaults.pod_rest,
    )
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["demo", "--pod-ports", "70000"])
