"""The Helm chart deploy/helm/horde-validator, linted, rendered and validated offline.

`helm_python` (package helm-python-sdk) binds the Helm 4 Go SDK: `lint` is `helm lint`, and
`Chart.render` is `helm template` (no cluster; values are checked against values.schema.json first).
Every rendered object then goes through `kubernetes_validate` in strict mode (the Kubernetes OpenAPI
schemas, bundled, with unknown fields rejected), which is what the API server would refuse.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from horde_common.service_ports import SERVICE_PORTS, service_module

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "horde-validator"
SCALED = CHART / "examples" / "scaled.yaml"
RELEASE = "horde"
NAMESPACE = "validators"
PREFIX = f"{RELEASE}-horde-validator"
SINGLETONS = sorted(set(SERVICE_PORTS) - {"job-runner"})

# Every optional feature switched on, to validate the templates' rarely used branches as well.
EVERYTHING: dict[str, Any] = {
    "image": {"repository": "registry.example/horde-validator", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry"}],
    "trustedMiner": {"key": "5FTrusted", "address": "10.0.0.9", "port": 8000},
    "s3": {
        "bucketPrompts": "prompts",
        "bucketAnswers": "answers",
        "region": "eu-west-1",
        "endpointUrl": "https://s3.example",
    },
    "debugMiner": {"key": "5FDebug", "address": "10.0.0.10", "port": 8001},
    "logLevel": "DEBUG",
    "extraEnv": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "DEBUG_MINER_COUNT": 2},
    "secrets": {"aws": {"name": "horde-aws"}, "debugToken": {"name": "horde-debug"}},
    "jobRunner": {"replicas": 3, "podAnnotations": {"example/note": "x"}},
    "serviceAccountName": "horde",
    "commonLabels": {"team": "validators"},
    "podAnnotations": {"example/all": "y"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "horde", "effect": "NoSchedule"}],
    "service": {"type": "NodePort"},
    "fullnameOverride": "hv",
}


def scaled_values() -> dict[str, Any]:
    return helm.values_from_yaml(SCALED.read_text())


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert "horde-validator/templates/NOTES.txt" in out
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def deployment(docs: list[dict[str, Any]], component: str, prefix: str = PREFIX) -> dict[str, Any]:
    return by_kind(docs, "Deployment")[f"{prefix}-{component}"]


def container(d: dict[str, Any]) -> dict[str, Any]:
    [c] = d["spec"]["template"]["spec"]["containers"]
    return c


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def scaled_docs() -> list[dict[str, Any]]:
    return render(scaled_values())


# --- lint -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, "scaled", "everything"], ids=["default", "scaled", "everything"])
def test_lint_is_clean(values: str | None) -> None:
    chosen = {"scaled": scaled_values(), "everything": EVERYTHING}.get(values or "")
    report = helm.lint(CHART, chosen, strict=True, namespace=NAMESPACE)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert problems == []


def test_lint_reports_a_broken_template(tmp_path: Path) -> None:
    """The linter is really looking: a chart with a template error does not pass."""
    with helm.Chart.load(CHART) as chart:
        copy_dir = Path(chart.save_dir(tmp_path))
    (copy_dir / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope.deeper }}\n")
    report = helm.lint(copy_dir)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"])


# --- what the default values render ----------------------------------------------------------------------


def test_default_objects(default_docs: list[dict[str, Any]]) -> None:
    kinds = Counter(d["kind"] for d in default_docs)
    assert kinds == {"Deployment": 5, "Service": 5, "ConfigMap": 1, "Job": 1}
    assert set(by_kind(default_docs, "Deployment")) == {f"{PREFIX}-{n}" for n in SERVICE_PORTS}
    assert set(by_kind(default_docs, "Service")) == {f"{PREFIX}-{n}" for n in SERVICE_PORTS}
    # The chart creates no Secret: it only references the operator's.
    assert "Secret" not in kinds


@pytest.mark.parametrize("component", sorted(SERVICE_PORTS))
def test_deployment(default_docs: list[dict[str, Any]], component: str) -> None:
    d = deployment(default_docs, component)
    port = SERVICE_PORTS[component]
    pod = d["spec"]["template"]["spec"]
    c = container(d)

    assert d["spec"]["replicas"] == 1
    assert c["command"] == ["python", "-m", service_module(component)]
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]

    # Selector matches the pod labels and is unique to the component.
    selector = d["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == component
    assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()

    # Security: non-root, read-only root filesystem, no privileges, no API token.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]

    # Config from the ConfigMap, connection URLs from the Secret.
    assert c["envFrom"] == [{"configMapRef": {"name": f"{PREFIX}-config"}}]
    env = {e["name"]: e for e in c["env"]}
    for name in ("DATABASE_URL", "AMQP_URL"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "horde-connections", "key": name}
    assert all("value" not in e for e in c["env"]), "no literal values next to the secrets"

    # The wallet Secret as files at BITTENSOR_WALLET_DIRECTORY.
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "wallet"]
    assert mount == {"name": "wallet", "mountPath": "/wallets", "readOnly": True}
    [wallet] = [v for v in pod["volumes"] if v["name"] == "wallet"]
    assert wallet["secret"]["secretName"] == "horde-wallet"
    assert {"key": "hotkey", "path": "validator/hotkeys/default"} in wallet["secret"]["items"]

    annotations = d["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert len(annotations["checksum/config"]) == 64


def test_singletons_never_run_twice(default_docs: list[dict[str, Any]]) -> None:
    for component in SINGLETONS:
        assert deployment(default_docs, component)["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment(default_docs, "job-runner")["spec"]["strategy"]["type"] == "RollingUpdate"


@pytest.mark.parametrize("component", sorted(SERVICE_PORTS))
def test_service(default_docs: list[dict[str, Any]], component: str) -> None:
    svc = by_kind(default_docs, "Service")[f"{PREFIX}-{component}"]
    port = SERVICE_PORTS[component]
    assert svc["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = deployment(default_docs, component)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_configmap_holds_only_non_secret_settings(default_docs: list[dict[str, Any]]) -> None:
    [cm] = by_kind(default_docs, "ConfigMap").values()
    data = cm["data"]
    assert data["SERVICE_HOST"] == "0.0.0.0"
    assert data["BITTENSOR_WALLET_DIRECTORY"] == "/wallets"
    assert data["BITTENSOR_NETUID"] == "12"
    assert all(isinstance(v, str) for v in data.values())
    secrets = {"DATABASE_URL", "AMQP_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DEBUG_TOKEN"}
    assert not secrets & set(data)
    # Unset optional settings are left out (an empty TRUSTED_MINER_PORT would not parse).
    assert "TRUSTED_MINER_PORT" not in data


def test_migration_hook_job(default_docs: list[dict[str, Any]]) -> None:
    [job] = by_kind(default_docs, "Job").values()
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    c = container(job)
    assert c["command"] == ["horde", "migrate"]
    env = {e["name"]: e for e in c["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "horde-connections"
    # A pre-install hook runs before the release's own objects exist: it must not need them.
    assert "envFrom" not in c
    assert "serviceAccountName" not in pod
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_migrations_can_be_disabled() -> None:
    assert not by_kind(render({"migrations": {"enabled": False}}), "Job")


# --- the scaled example ---------------------------------------------------------------------------------


def test_scaled_example(default_docs: list[dict[str, Any]], scaled_docs: list[dict[str, Any]]) -> None:
    assert Counter(d["kind"] for d in scaled_docs)["Deployment"] == 5
    assert deployment(scaled_docs, "job-runner")["spec"]["replicas"] == 4
    for component in SINGLETONS:
        assert deployment(scaled_docs, component)["spec"]["replicas"] == 1
    for component in SERVICE_PORTS:
        before = container(deployment(default_docs, component))["resources"]
        after = container(deployment(scaled_docs, component))["resources"]
        for kind in ("requests", "limits"):
            assert memory_bytes(after[kind]["memory"]) > memory_bytes(before[kind]["memory"]), component
    env = {e["name"]: e for e in container(deployment(scaled_docs, "job-runner"))["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "horde-aws"
    assert env["DEBUG_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "horde-debug"


def test_everything_switched_on() -> None:
    docs = render(EVERYTHING)
    d = deployment(docs, "job-runner", prefix="hv")
    assert d["spec"]["replicas"] == 3
    pod = d["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "horde"
    assert container(d)["image"] == "registry.example/horde-validator:1.2.3"
    assert d["spec"]["template"]["metadata"]["labels"]["team"] == "validators"
    [cm] = by_kind(docs, "ConfigMap").values()
    assert cm["data"]["TRUSTED_MINER_PORT"] == "8000"
    assert cm["data"]["DEBUG_MINER_COUNT"] == "2"
    assert cm["data"]["AWS_ENDPOINT_URL"] == "https://s3.example"
    assert {s["spec"]["type"] for s in by_kind(docs, "Service").values()} == {"NodePort"}


# --- every object passes the Kubernetes schemas ------------------------------------------------------------


def _all_renders() -> Iterator[tuple[str, dict[str, Any]]]:
    for label, values in (("default", None), ("scaled", scaled_values()), ("everything", EVERYTHING)):
        for doc in render(values):
            yield f"{label}:{doc['kind']}/{doc['metadata']['name']}", doc


@pytest.mark.parametrize("kube_version", ["1.27", latest_version()])
def test_manifests_pass_kubernetes_validate_strict(kube_version: str) -> None:
    checked = 0
    for label, doc in _all_renders():
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{label}: {exc.message} at {'/'.join(map(str, exc.absolute_path))}")
        checked += 1
    assert checked == 3 * 12


def test_kubernetes_validate_is_strict(default_docs: list[dict[str, Any]]) -> None:
    """The check above is real: a misspelt field or a wrong type is refused."""
    d = copy.deepcopy(deployment(default_docs, "scheduler"))
    container(d)["readinessprobe"] = container(d).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(d, latest_version(), strict=True)
    d = copy.deepcopy(deployment(default_docs, "scheduler"))
    d["spec"]["replicas"] = "1"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(d, latest_version(), strict=True)


# --- values.schema.json ----------------------------------------------------------------------------------


def test_schema_is_a_valid_json_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    # The defaults and the example satisfy it (independently of Helm's own check).
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))


@pytest.mark.parametrize("values", [None, "scaled", "everything"], ids=["default", "scaled", "everything"])
def test_schema_accepts_good_values(values: str | None) -> None:
    chosen = {"scaled": scaled_values(), "everything": EVERYTHING}.get(values or "")
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chosen)


BAD_VALUES = {
    "replicas-not-a-number": ({"jobRunner": {"replicas": "many"}}, "/jobRunner/replicas"),
    "negative-replicas": ({"jobRunner": {"replicas": -1}}, "/jobRunner/replicas"),
    "netuid-as-string": ({"bittensor": {"netuid": "12"}}, "/bittensor/netuid"),
    "unknown-log-level": ({"logLevel": "LOUD"}, "/logLevel"),
    "misspelt-key": ({"jobrunner": {"replicas": 2}}, "jobrunner"),
    "unknown-nested-key": ({"scheduler": {"replicas": 2}}, "replicas"),
    "no-connections-secret": ({"secrets": {"connections": {"name": ""}}}, "/secrets/connections/name"),
    "bad-port": ({"trustedMiner": {"port": 70000}}, "/trustedMiner/port"),
    "relative-wallet-dir": (
        {"bittensor": {"wallet": {"directory": "wallets"}}},
        "/bittensor/wallet/directory",
    ),
    "bad-pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "bad-memory": ({"jobRunner": {"resources": {"limits": {"memory": "lots"}}}}, "/jobRunner/resources"),
    "http-facilitator": ({"facilitator": {"uri": "http://facilitator"}}, "/facilitator/uri"),
}


@pytest.mark.parametrize("values,where", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as exc:
            chart.validate_schema(values)
        assert where in str(exc.value)
        # `helm template` / `helm install` refuse them too.
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
