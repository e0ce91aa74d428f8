"""``mmgw apply | get | delete`` as a subprocess against the session deployment's management API.

Every InferenceService registered here is deleted again, so the other tests
sharing the deployment see only sklearn-mnist.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from gateway.tools import launcher, samples

from .cli_helpers import CLI, HEADER, KIND, isvc_yaml, mmgw
from .conftest import seed_body


def test_apply_get_and_rest(cli: CLI, tmp_path: Path) -> None:
    cli.names |= {"cli-alpha", "cli-beta"}
    both = tmp_path / "two.yaml"
    both.write_text(isvc_yaml("cli-alpha") + "---\n" + isvc_yaml("cli-beta"))

    assert (
        cli.ok("apply", "-f", str(both)) == f"{KIND}/cli-alpha created\n{KIND}/cli-beta created\n"
    )
    assert (
        cli.ok("apply", "-f", str(both))
        == f"{KIND}/cli-alpha unchanged\n{KIND}/cli-beta unchanged\n"
    )

    table = cli.wait_ready("cli-alpha", "cli-beta")
    header = cli.ok("get", "isvc").splitlines()[0]
    assert header.split() == HEADER  # `kubectl get isvc`'s columns, KServe's
    for name in ("cli-alpha", "cli-beta"):
        # no PREV (and no PREVROLLEDOUTREVISION) without a canary: all traffic to the latest
        assert table[name][:4] == [name, f"{cli.deployment.url}/v2/models/{name}", "True", "100"]
        assert table[name][4].startswith(f"{name}__isvc-")  # LATESTREADYREVISION
        assert re.fullmatch(r"\d+[smhd]", table[name][5])
    assert "sklearn-mnist" in table

    with httpx.Client(base_url=cli.deployment.url, timeout=30) as rest:
        for name in ("cli-alpha", "cli-beta"):
            response = rest.post(f"/v2/models/{name}/infer", json=seed_body())
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["contents"]["int64Contents"] == ["8"]

    item = json.loads(cli.ok("get", "isvc", "cli-alpha", "-o", "json"))
    assert item["metadata"]["name"] == "cli-alpha" and item["kind"] == "InferenceService"
    assert item["spec"]["predictor"]["model"]["storage"]["path"] == samples.SAMPLE_FILE
    assert item["status"]["conditions"][0] == {"type": "Ready", "status": "True"}
    assert item["status"]["url"] == f"{cli.deployment.url}/v2/models/cli-alpha"
    assert item["status"]["modelStatus"]["states"]["activeModelState"] == "Loaded"

    for output in ("json", "yaml"):  # what get prints, apply takes back as it is
        printed = cli.ok("get", "isvc", "cli-beta", "-o", output)
        assert cli.ok("apply", "-f", "-", stdin=printed) == f"{KIND}/cli-beta unchanged\n"
    applied = cli.ok("apply", "-f", "-", stdin=cli.ok("get", "isvc", "-o", "yaml")).splitlines()
    assert f"{KIND}/cli-alpha unchanged" in applied and all(
        line.endswith(" unchanged") for line in applied
    )

    placement = json.loads(cli.ok("get", "placement", "-o", "json"))
    assert len(placement["pods"]) == len(cli.deployment.ports.pods)
    loaded = {
        m["model_id"].partition("__isvc-")[0] for pod in placement["pods"] for m in pod["models"]
    }
    assert {"cli-alpha", "cli-beta", "sklearn-mnist"} <= loaded

    lines = cli.ok("get", "placement").splitlines()
    assert lines[0].split() == [
        "POD",
        "MODEL",
        "STATE",
        "SIZE",
        "LAST",
        "USE",
        "IN",
        "FLIGHT",
        "REQ/S",
    ]
    for address in cli.deployment.ports.pod_addresses:
        assert any(line.startswith(address) and "(healthy, " in line for line in lines)
    alpha = next(line for line in lines if "cli-alpha__isvc-" in line).split()
    assert alpha[1] == "LOADED" and alpha[2].endswith("Mi")


def test_apply_from_stdin_and_a_changed_path(cli: CLI, deployment: launcher.Deployment) -> None:
    cli.names.add("cli-gamma")
    models = deployment.data_dir / "models"
    (models / "cli").mkdir(exist_ok=True)
    shutil.copyfile(models / samples.SAMPLE_FILE, models / "cli" / "copy.joblib")

    assert cli.ok("apply", "-f", "-", stdin=isvc_yaml("cli-gamma")) == f"{KIND}/cli-gamma created\n"
    assert (
        cli.ok("apply", "-f", "-", stdin=isvc_yaml("cli-gamma")) == f"{KIND}/cli-gamma unchanged\n"
    )
    changed = isvc_yaml("cli-gamma", "cli/copy.joblib")
    assert cli.ok("apply", "-f", "-", stdin=changed) == f"{KIND}/cli-gamma configured\n"
    assert cli.ok("apply", "-f", "-", stdin=changed) == f"{KIND}/cli-gamma unchanged\n"

    deadline = time.monotonic() + 60
    while True:  # the rollout: traffic moves once the new path is loaded
        item = json.loads(cli.ok("get", "isvc", "cli-gamma", "-o", "json"))
        if item["status"]["modelStatus"]["transitionStatus"] == "UpToDate":
            break
        assert time.monotonic() < deadline, item["status"]
        time.sleep(0.2)
    assert item["spec"]["predictor"]["model"]["storage"]["path"] == "cli/copy.joblib"
    assert cli.wait_ready("cli-gamma")["cli-gamma"][2] == "True"


def test_delete(cli: CLI, deployment: launcher.Deployment) -> None:
    cli.names.add("cli-delta")
    cli.ok("apply", "-f", "-", stdin=isvc_yaml("cli-delta"))
    cli.wait_ready("cli-delta")
    with httpx.Client(base_url=deployment.url, timeout=30) as rest:
        assert rest.post("/v2/models/cli-delta/infer", json=seed_body()).status_code == 200

        assert cli.ok("delete", "isvc", "cli-delta") == f'{KIND} "cli-delta" deleted\n'

        response = rest.post("/v2/models/cli-delta/infer", json=seed_body())
        assert response.status_code == 404
        assert response.json()["message"] == "model 'cli-delta' is not registered"
        assert rest.post("/v2/models/sklearn-mnist/infer", json=seed_body()).status_code == 200
    assert "cli-delta" not in cli.table()
    assert "Error from server (NotFound)" in cli.refused("delete", "isvc", "cli-delta")
    assert "Error from server (NotFound)" in cli.refused("get", "isvc", "cli-delta")


BAD = {
    "bad-yaml": (isvc_yaml("cli-bad").replace("name: sklearn", "name: [sklearn"), "not valid YAML"),
    "unknown-kind": (isvc_yaml("cli-bad", kind="InferenceGadget"), "InferenceGadget"),
    "missing-field": (
        isvc_yaml("cli-bad").replace("      modelFormat:\n        name: sklearn\n", ""),
        "spec.predictor.model.modelFormat: Field required",
    ),
    "bad-name": (isvc_yaml("cli-Bad_name"), "invalid name 'cli-Bad_name'"),
    # a "billion laughs": 10^7 nodes through aliases, refused before anything is expanded
    "alias-bomb": (
        "".join(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 10 if p else ['x'] * 10)}]\n"
            for p, n in zip(["", *"abcdef"], "abcdefg", strict=True)
        )
        + "kind: InferenceService\n",
        "document 1 expands to more than 100,000 nodes through its aliases",
    ),
    "over-3-MiB": (
        isvc_yaml("cli-bad") + "# " + "x" * (3 << 20) + "\n",
        "larger than 3 MiB, the API's request limit",
    ),
    "metadata-not-a-mapping": (
        re.sub(r"metadata:\n(  .*\n)+", "metadata: cli-bad\n", isvc_yaml("cli-bad")),
        "with metadata.name can be applied",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_and_registers_nothing(cli: CLI, case: str, tmp_path: Path) -> None:
    document, message = BAD[case]
    cli.names |= {"cli-bad", "cli-Bad_name"}  # deleted afterwards, should a refusal fail
    before = cli.table()
    path = tmp_path / "bad.yaml"
    path.write_text(document)
    for source, stdin in ((str(path), None), ("-", document)):
        stderr = cli.refused("apply", "-f", source, stdin=stdin)
        assert message in stderr
        assert stderr.startswith("error: ") and "Traceback" not in stderr
    assert cli.table().keys() == before.keys()
    assert "NotFound" in cli.refused("get", "isvc", "cli-bad")


def test_a_good_document_beside_a_bad_one_is_applied_as_kubectl_does(cli: CLI) -> None:
    cli.names |= {"cli-good", "cli-bad"}
    bad = isvc_yaml("cli-bad").replace("      modelFormat:\n        name: sklearn\n", "")
    stdin = bad + "---\n" + isvc_yaml("cli-good")
    result = cli("apply", "-f", "-", stdin=stdin)
    assert result.returncode == 1
    assert result.stdout == f"{KIND}/cli-good created\n"
    assert f"{KIND}/cli-bad: Error from server (BadRequest): " in result.stderr
    assert "spec.predictor.model.modelFormat: Field required" in result.stderr
    assert "cli-good" in cli.table() and "cli-bad" not in cli.table()


def test_a_server_that_is_not_running(tmp_path: Path) -> None:
    server = f"http://127.0.0.1:{launcher.free_port()}"
    path = tmp_path / "isvc.yaml"
    path.write_text(isvc_yaml("cli-nowhere"))
    for args in (
        ("apply", "-f", str(path)),
        ("get", "isvc"),
        ("get", "placement"),
        ("delete", "isvc", "x"),
    ):
        result = mmgw(*args, server=server)
        assert result.returncode == 1, args
        assert f"cannot reach the management API at {server}" in result.stderr
        assert "Traceback" not in result.stderr


def test_an_empty_file_and_a_missing_one(cli: CLI, tmp_path: Path) -> None:
    assert "no objects passed to apply" in cli.refused("apply", "-f", "-", stdin="---\n")
    assert "No such file or directory" in cli.refused("apply", "-f", str(tmp_path / "missing.yaml"))
