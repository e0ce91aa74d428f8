"""The Makefile's set-up targets on a machine that lacks what they install.

- ``make debs`` (which ``make test`` depends on) installs etcd, curl, chromium and
  chromedriver from Debian's packages when they are missing: run here with a PATH that has
  none, and a stand-in ``apt-get`` that records its arguments and puts them on that PATH.
- ``make .env`` gives docker compose the management API's token on a first run, and keeps
  the one a later run finds.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = ROOT / "Makefile"

FAKE_APT = """#!/bin/sh
echo "$@" >> "{log}"
case "$1" in install)
  for tool in etcd curl chromium chromedriver; do printf '#!/bin/sh\\n' > "{bin}/$tool"; chmod +x "{bin}/$tool"; done;;
esac
"""


def bare_path(tmp_path: Path) -> Path:
    """A folder for PATH holding only the tools make's recipes use, and no etcd or curl."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("sh", "make", "python3", "printf", "echo", "chmod"):
        found = shutil.which(tool)
        assert found is not None, tool
        (folder / tool).symlink_to(found)
    return folder


def test_make_debs_installs_what_the_tests_run_when_it_is_missing(tmp_path: Path) -> None:
    folder = bare_path(tmp_path)
    log = tmp_path / "apt.log"
    apt = folder / "apt-get"
    apt.write_text(FAKE_APT.format(log=log, bin=folder))
    apt.chmod(apt.stat().st_mode | stat.S_IEXEC)
    result = subprocess.run(
        ["make", "-f", str(MAKEFILE), "-C", str(tmp_path), "debs"],
        env={"PATH": str(folder), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "update -qq"
    assert re.fullmatch(r"install -y -qq etcd-server curl chromium chromium-driver", calls[1])
    # present now: a second run installs nothing
    log.unlink()
    subprocess.run(
        ["make", "-f", str(MAKEFILE), "-C", str(tmp_path), "debs"],
        env={"PATH": str(folder), "HOME": str(tmp_path)},
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert not log.exists()


def test_make_test_depends_on_debs() -> None:
    rule = next(line for line in MAKEFILE.read_text().splitlines() if line.startswith("test:"))
    assert "debs" in rule.split(":", 1)[1].split()


def test_make_env_gives_compose_a_token_once(tmp_path: Path) -> None:
    def make_env() -> str:
        subprocess.run(
            ["make", "-f", str(MAKEFILE), "-C", str(tmp_path), ".env"],
            env={**os.environ, "PYTHON": "python3"},
            check=True,
            capture_output=True,
            timeout=60,
        )
        return (tmp_path / ".env").read_text()

    first = make_env()
    assert re.fullmatch(r"MMGW_API_TOKEN=[0-9a-f]{32}\n", first)
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    assert make_env() == first  # kept, not replaced
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    token = compose["services"]["gateway"]["environment"]["MMGW_API_TOKEN"]
    assert token.startswith("${MMGW_API_TOKEN:?")  # what .env sets; compose refuses without it
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
