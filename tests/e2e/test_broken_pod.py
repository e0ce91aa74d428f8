"""A runtime that fails its loads on one pod: the loads go to the other pods."""

from __future__ import annotations

import httpx

from gateway.pod.runtimes.synthetic import write_synthetic
from gateway.tools import launcher

from .conftest import ISVCS, wait_ready
from .test_placement import ROW, MiB, answer, infer_body, isvc, metric


def test_loads_that_fail_on_one_pod_are_retried_on_the_others(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for i in range(6):
        write_synthetic(tmp_path / "models" / f"b{i}.json", size_bytes=MiB)
    broken = ["--runtime", "synthetic=tests.e2e.broken_runtime:BrokenRuntime"]
    # The broken pod has the most room, so placement tries it first every time.
    deployment = launcher.Deployment(
        data_dir=tmp_path,
        ports=launcher.Ports.free(pods=2),
        pod_capacity=64 * MiB,
        pod_args={0: [*broken, "--capacity", str(256 * MiB)]},
    )
    with (
        deployment,
        httpx.Client(base_url=deployment.api_url, timeout=60) as api,
        httpx.Client(base_url=deployment.url, timeout=60) as rest,
    ):
        for i in range(6):
            api.put(f"{ISVCS}/b{i}", json=isvc(f"b{i}", f"b{i}.json")).raise_for_status()
        for i in range(6):
            assert wait_ready(api, f"b{i}")["status"]["conditions"][0]["status"] == "True"
            assert answer(rest.post(f"/v2/models/b{i}/infer", json=infer_body())) == sum(ROW)
        broken_pod, good_pod = deployment.ports.pod_addresses
        table = {p["pod"]: p for p in api.get("/v1/placement").json()["pods"]}
        assert {m["state"] for m in table[broken_pod]["models"]} == {
            "FAILED"
        }  # each tried there once
        assert all("broken on purpose" in m["reason"] for m in table[broken_pod]["models"])
        assert [m["state"] for m in table[good_pod]["models"]] == ["LOADED"] * 6
        assert metric(api, "mmgw_model_load_failures_total") >= 6
