"""A gateway started before its etcd waits for it, and gives up, naming it, after --store-wait."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from gateway.tools import launcher
from gateway.tools.launcher import Deployment, EtcdServer, free_port


def test_a_gateway_started_before_etcd_serves_once_etcd_is_up(tmp_path: Path) -> None:
    etcd = EtcdServer(tmp_path / "etcd")
    deployment = Deployment(data_dir=tmp_path / "gw", ports=launcher.Ports.free(), store=etcd.url)
    started: list[BaseException | None] = []

    def start() -> None:
        try:
            deployment.start(timeout=90)
            started.append(None)
        except BaseException as exc:  # reported by the test's thread below
            started.append(exc)

    starter = threading.Thread(target=start)
    try:
        starter.start()
        log = deployment.data_dir / "logs" / "gateway.log"
        deadline = time.monotonic() + 60
        while "waiting for the store" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the gateway never said it was waiting for etcd"
            time.sleep(0.1)
        assert deployment.process("gateway").popen.poll() is None
        etcd.start()
        starter.join(120)
        assert started == [None]  # the gateway became ready and sees every pod
        text = log.read_text()
        assert f"etcd at 127.0.0.1:{etcd.client_port} is unavailable" in text
        assert "gateway ready" in text
    finally:
        starter.join(120)
        deployment.stop()
        etcd.stop()


def test_a_gateway_gives_up_on_an_unreachable_store_naming_it(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.tools.cli",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--api-port",
            str(free_port()),
            "--extproc-port",
            str(free_port()),
            "--store",
            f"etcd://127.0.0.1:{port}",
            "--store-wait",
            "1.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert f"cannot start: etcd at 127.0.0.1:{port} is unavailable" in done.stderr
    assert "(waited 1.5 s)" in done.stderr
    assert "waiting for the store" in done.stderr
    assert time.monotonic() - started >= 1.5
