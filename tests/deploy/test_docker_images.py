"""Checks of deploy/docker: hadolint, the shape of each service's image, the helpers.

No image is built here (there is no container engine on this machine); what can
be known without one is checked: the linter, that every service has a final
target whose entry point, port and environment agree with its package, Settings
and the Helm chart, that the final stages are non-root and free of build tools,
that every install is pinned by the lock, and that the health check and the
offline-model check work.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from viewfinder_common.grpc_server import GrpcServer
from viewfinder_common.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
CHART_VALUES = REPO / "deploy" / "helm" / "viewfinder" / "values.yaml"
LOCK = REPO / "requirements" / "lock.txt"
HADOLINT = Path(sys.executable).parent / "hadolint"
SERVICES = ("ingest", "tagger", "embedder", "search", "exporter")
WITH_MODELS = ("embedder", "tagger")
BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|build-essential|make|cmake|cargo|rustc)\b")


@dataclass
class Stage:
    """One FROM ... AS name block: its base and instructions (keyword, argument text)."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARGs and the stages by name (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            current = Stage(name.strip(), base.strip())
            stages[current.name] = current
        elif current is None:
            assert keyword == "ARG", f"only ARG may precede the first FROM: {line}"
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            current.instructions.append((keyword, rest.strip()))
    return args, stages


def env_of(stage: Stage) -> dict[str, str]:
    env = {}
    for arg in stage.all("ENV"):
        for item in shlex.split(arg):
            key, _, value = item.partition("=")
            env[key] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"viewfinder_{service}.config")
    (cls,) = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, ServiceSettings) and obj.__module__ == module.__name__
    ]
    return cls


# ---------------------------------------------------------------- hadolint


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nCMD python app.py\n"
    )
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(careless)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "latest" tag


# ---------------------------------------------------------------- image shape


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_matches_package_settings_and_chart(
    dockerfile: tuple[dict[str, str], dict[str, Stage]], service: str
) -> None:
    _, stages = dockerfile
    stage = stages[service]
    assert stage.base == "runtime"
    assert f"--from=build-{service} /opt/venv /opt/venv" in stage.all("COPY")

    scripts = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    (entrypoint,) = stage.all("ENTRYPOINT")
    assert entrypoint == f'["viewfinder-{service}"]'
    assert f"viewfinder-{service}" in scripts

    chart = yaml.safe_load(CHART_VALUES.read_text())
    assert stage.all("EXPOSE") == [str(chart["services"][service]["grpcPort"])]

    cls = settings_class(service)
    prefix = cls.model_config["env_prefix"]
    for key in env_of(stage):
        if key.startswith("VIEWFINDER_"):
            assert key.startswith(prefix), key
            assert key[len(prefix) :].lower() in cls.model_fields, key
    assert env_of(stage)[f"{prefix}GRPC_HOST"] == "0.0.0.0"

    (health,) = stage.all("HEALTHCHECK")
    assert health.endswith(f'CMD ["python", "/opt/viewfinder/healthcheck.py", "{service}"]')
    assert not stage.all("USER"), "the final stage keeps the runtime stage's non-root user"
    for _, arg in stage.instructions:
        assert not BUILD_TOOLS.search(arg), f"{service}: build tools in the final image: {arg}"


@pytest.mark.parametrize("service", SERVICES)
def test_build_stage_installs_only_locked_versions(
    dockerfile: tuple[dict[str, str], dict[str, Stage]], service: str
) -> None:
    _, stages = dockerfile
    for name in ("build-base", f"build-{service}"):
        installs = [run for run in stages[name].all("RUN") if "pip install" in run]
        assert installs, name
        for run in installs:
            assert "-c requirements/lock.txt" in run, f"{name}: unpinned install: {run}"
    build = stages[f"build-{service}"]
    assert build.base == "build-base"
    (run,) = build.all("RUN")
    if service in WITH_MODELS:
        assert "-r deploy/docker/offline-models.txt" in run
        assert "python deploy/docker/check_offline_models.py" in run
        assert '--extra-index-url "${TORCH_INDEX_URL}"' in run
    else:
        assert "offline-models" not in run
        assert "TORCH_INDEX_URL" not in run, "only the model services need the torch index"


def test_runtime_stage_is_slim_and_non_root(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    args, stages = dockerfile
    assert "slim" in args["PYTHON_IMAGE"]
    # The venv is copied across stages: its interpreter path must exist in both.
    assert stages["runtime"].base == stages["build-base"].base == "${PYTHON_IMAGE}"
    (user,) = stages["runtime"].all("USER")
    uid, _, gid = user.partition(":")
    chart = yaml.safe_load(CHART_VALUES.read_text())
    # Numeric, so that the kubelet can verify runAsNonRoot; the same ids as the chart.
    assert int(uid) == chart["podSecurityContext"]["runAsUser"] != 0
    assert int(gid) == chart["podSecurityContext"]["runAsGroup"]
    for _, arg in stages["runtime"].instructions:
        assert not BUILD_TOOLS.search(arg), arg


def test_build_context_lets_in_what_the_dockerfile_copies(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
) -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if line and not line.startswith("#"))] == "*"
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    _, stages = dockerfile
    for stage in stages.values():
        for copy in stage.all("COPY"):
            if copy.startswith("--from"):
                continue
            for source in copy.split()[:-1]:
                assert any(source.rstrip("/").startswith(a) for a in allowed), (
                    f"{source} is outside the context"
                )


def test_offline_models_are_pinned_by_the_lock() -> None:
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pinned = {}
    for line in LOCK.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pinned[norm(name.split("[")[0])] = version
    models = _load(DOCKER / "check_offline_models.py").requirement_names(DOCKER / "offline-models.txt")
    assert set(models) == set(_load(DOCKER / "check_offline_models.py").EXPECTED)
    unpinned = [m for m in models if norm(m) not in pinned]
    assert not unpinned, f"not pinned in requirements/lock.txt (run `make lock`): {unpinned}"


# ---------------------------------------------------------------- helpers shipped in the images


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_model_check_reports_what_is_missing() -> None:
    check = _load(DOCKER / "check_offline_models.py")
    assert check.problems_of("no-such-viewfinder-model") == ["no-such-viewfinder-model: not installed"]
    names = check.requirement_names(DOCKER / "offline-models.txt")
    installed = []
    for name in names:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        installed.append(name)
    if not installed:
        pytest.skip("no offline model package in this venv (the image build runs this check)")
    for name in installed:
        assert check.problems_of(name) == [], name


async def test_healthcheck_answers_with_the_servers_health() -> None:
    server = GrpcServer(host="127.0.0.1", port=0, service_names=[], registrations=[], shutdown_grace_s=0.1)
    port = await server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWFINDER_")}
    env["VIEWFINDER_SEARCH_GRPC_PORT"] = str(port)
    command = [sys.executable, str(DOCKER / "healthcheck.py"), "search"]

    async def probe() -> int:
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode is not None
        return process.returncode

    try:
        assert await probe() == 0
    finally:
        await server.stop()
    assert await probe() == 1
