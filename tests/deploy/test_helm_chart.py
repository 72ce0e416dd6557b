"""Checks of the Helm chart ``deploy/helm/viewfinder``.

* ``helm lint --strict`` with the default values and every example values file;
* ``helm template`` piped to ``kubernetes-validate --strict`` for the target
  Kubernetes version (and the oldest the chart declares), for the default values
  and every example; KEDA objects, which kubernetes-validate has no schema for,
  against a strict schema of the KEDA fields the chart uses;
* no drift between the environment the chart gives each service and the
  service's Settings class, introspected now (so the check follows the services
  as they grow settings);
* the production-like values scale each stage on its own signal;
* breaking a template or a value makes these checks fail.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock
import pytest
import yaml
from pydantic import AliasChoices, AliasPath, BaseModel, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.settings import ServiceSettings
from viewfinder_common.vectorstore.elasticsearch import ElasticsearchSettings
from viewfinder_common.vectorstore.factory import VectorStoreSettings
from viewfinder_common.vectorstore.hologres import HologresSettings
from viewfinder_common.vectorstore.opensearch import LindormSettings, OpenSearchSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "viewfinder"
EXAMPLES = CHART / "examples"
TOOLS = REPO / "deploy" / "helm" / "tools.py"
VENV_BIN = Path(sys.executable).parent

# The Kubernetes version the chart is validated for, and the oldest it declares
# (Chart.yaml kubeVersion). Both are in kubernetes-validate's schema set.
TARGET_K8S = "1.33.0"
MIN_K8S = "1.29.0"
RELEASE = "vf"
NAMESPACE = "viewfinder"

Render = Callable[..., str]
RenderProcess = Callable[..., subprocess.CompletedProcess[str]]
Validate = Callable[[str, str], subprocess.CompletedProcess[str]]


def load_manifests(text: str) -> list[dict[str, Any]]:
    """The rendered documents, empty ones dropped."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(manifests: Iterable[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Manifests of one kind keyed by their component label (or name)."""
    found = {}
    for doc in manifests:
        if doc["kind"] == kind:
            labels = doc["metadata"].get("labels", {})
            found[labels.get("app.kubernetes.io/component", doc["metadata"]["name"])] = doc
    return found


@pytest.fixture(scope="session")
def helm() -> Path:
    """The static helm binary, extracted once (and only when missing or stale)."""
    result = subprocess.run(
        [sys.executable, str(TOOLS), "--dest", str(VENV_BIN)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"deploy/helm/tools.py failed:\n{result.stderr}"
    path = VENV_BIN / "helm"
    assert path.is_file()
    return path


def _template_command(
    helm: Path,
    values_files: Sequence[Path],
    set_values: Sequence[str],
    set_json: Sequence[str],
    chart: Path,
    kube_version: str,
) -> list[str]:
    cmd = [
        str(helm),
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube_version,
    ]
    for path in values_files:
        cmd += ["-f", str(path)]
    for item in set_values:
        cmd += ["--set", item]
    for item in set_json:
        cmd += ["--set-json", item]
    return cmd


@pytest.fixture(scope="session")
def render_process(helm: Path) -> RenderProcess:
    """``helm template`` as a finished process, for tests that expect it to fail."""

    def _render(
        *values_files: Path,
        set_values: Sequence[str] = (),
        set_json: Sequence[str] = (),
        chart: Path = CHART,
        kube_version: str = TARGET_K8S,
    ) -> subprocess.CompletedProcess[str]:
        cmd = _template_command(helm, values_files, set_values, set_json, chart, kube_version)
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    return _render


@pytest.fixture(scope="session")
def render(render_process: RenderProcess) -> Render:
    """``render(*values_files, set_values=(), set_json=(), chart=CHART, kube_version=TARGET_K8S)``: the manifests."""

    def _render(*values_files: Path, **options: Any) -> str:
        result = render_process(*values_files, **options)
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        return result.stdout

    return _render


@pytest.fixture(scope="session")
def validate() -> Validate:
    """Pipes manifests to ``kubernetes-validate --strict`` for a Kubernetes version."""

    def _validate(manifests: str, kube_version: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", kube_version, "-"],
            input=manifests,
            capture_output=True,
            text=True,
            check=False,
        )

    return _validate


SERVICES = ("ingest", "tagger", "embedder", "search", "exporter")
MINIMAL = EXAMPLES / "minimal.yaml"
PRODUCTION = EXAMPLES / "production.yaml"
VECTOR_STORES = ("pgvector", "milvus", "opensearch", "lindorm", "elasticsearch", "hologres")

# Every value set the chart is checked with: name -> values files (in order).
VALUE_SETS: dict[str, tuple[Path, ...]] = {
    "default": (),
    "minimal": (MINIMAL,),
    "production": (PRODUCTION,),
    **{f"vectorstore-{kind}": (EXAMPLES / f"vectorstore-{kind}.yaml",) for kind in VECTOR_STORES},
}

# Environment the chart sets ahead of the services, by service: the drift test
# tolerates exactly these names while the service's Settings class lacks them,
# and fails as soon as one becomes a real field, so that the entry is removed
# here and the strict check takes over (name -> the issue that adds it). A
# service that implements a setting under another name renames it in
# templates/_helpers.tpl (configEnv / secretEnv). Empty now: the vector-store
# selection and connections of issues 6 and 7 are real fields.
PENDING_SETTINGS: dict[str, dict[str, str]] = {}
# Values of VIEWFINDER_VECTORSTORE_KIND that a service's Settings reject today;
# the same ratchet: once accepted, the entry must go. Empty now: embedder and
# search accept every kind the chart offers.
PENDING_VECTOR_STORES: dict[str, dict[str, str]] = {}

# The settings classes beside the Elasticsearch / OpenSearch / Lindorm /
# Hologres adapters: VectorStoreSettings does not nest them (each adapter reads
# its own VIEWFINDER_<KIND>_* when chosen), so a service holding a
# VectorStoreSettings reads their variables too.
ADAPTER_SETTINGS: tuple[type[BaseSettings], ...] = (
    ElasticsearchSettings,
    OpenSearchSettings,
    LindormSettings,
    HologresSettings,
)

# Settings a service's process reads besides its Settings class: ingest hosts
# ConnectionService, whose registration builds ConnectionSettings() from the
# environment (VIEWFINDER_CONNECTIONS_*; viewfinder_common.connections.service).
# An entry must go once the class nests those settings itself.
# Settings a service's process reads outside its Settings class (none today:
# every service nests what it reads, e.g. ConnectionSettings in ingest and embedder).
READ_OUTSIDE_SETTINGS: dict[str, tuple[type[BaseSettings], ...]] = {}

STORE_VAR = "VIEWFINDER_VECTORSTORE_KIND"
SECRET_PLACEHOLDER = "value-from-a-secret"


# ---------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def rendered(render: Render) -> dict[str, str]:
    """Each value set rendered once for the whole module."""
    return {name: render(*files) for name, files in VALUE_SETS.items()}


def test_every_vector_store_has_an_example_and_the_examples_are_all_checked() -> None:
    examples = {p.name for p in EXAMPLES.glob("*.yaml")}
    checked = {p.name for files in VALUE_SETS.values() for p in files}
    assert examples == checked, f"examples not covered by the checks: {sorted(examples - checked)}"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["vectorStore"]["properties"]["kind"]["enum"]) == set(VECTOR_STORES)


def test_chart_deploys_every_service_package() -> None:
    packages = {p.parent.name for p in (REPO / "services").glob("*/pyproject.toml")}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["services"]) == packages == set(SERVICES)


# ---------------------------------------------------------------- helm lint


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(helm: Path, value_set: str) -> None:
    cmd = [str(helm), "lint", "--strict", str(CHART), "--kube-version", TARGET_K8S]
    for path in VALUE_SETS[value_set]:
        cmd += ["-f", str(path)]
    result = _run(cmd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_helm_lint_rejects_a_misspelt_value(helm: Path) -> None:
    # values.schema.json forbids unknown keys, so a typo cannot silently do nothing.
    cmd = [
        str(helm),
        "lint",
        "--strict",
        str(CHART),
        "--set",
        "services.tagger.autoscaling.keda.enabeld=true",
    ]
    result = _run(cmd)
    assert result.returncode != 0
    assert "enabeld" in result.stdout + result.stderr


# ---------------------------------------------------------------- kubernetes-validate


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_manifests_validate_strictly(rendered: dict[str, str], validate: Validate, value_set: str) -> None:
    result = validate(rendered[value_set], TARGET_K8S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


@pytest.mark.parametrize("value_set", ["default", "production"])
def test_manifests_validate_on_the_oldest_declared_kubernetes(
    render: Render, validate: Validate, value_set: str
) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"].startswith(">=" + MIN_K8S)
    manifests = render(*VALUE_SETS[value_set], kube_version=MIN_K8S)
    result = validate(manifests, MIN_K8S)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_misspelt_field_in_a_template_fails_validation(
    tmp_path: Path, render: Render, validate: Validate
) -> None:
    broken = tmp_path / "viewfinder"
    shutil.copytree(CHART, broken)
    deployment = broken / "templates" / "deployment.yaml"
    text = deployment.read_text()
    # A typo Kubernetes would reject (and helm would happily render).
    assert text.count("automountServiceAccountToken:") == 1
    deployment.write_text(text.replace("automountServiceAccountToken:", "automountServiceAcountToken:"))

    intact = validate(render(chart=CHART), TARGET_K8S)
    assert intact.returncode == 0, intact.stdout
    result = validate(render(chart=broken), TARGET_K8S)
    assert result.returncode != 0
    assert "automountServiceAcountToken" in result.stdout + result.stderr


# ---------------------------------------------------------------- KEDA objects

# kubernetes-validate knows no CRDs, so the KEDA objects are checked against
# this schema of the fields the chart uses (keda.sh/v1alpha1, KEDA 2.12+ docs),
# strict like --strict: an unknown or misspelt key fails.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_KAFKA_METADATA_KEYS = [
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "excludePersistentLag", "limitToPartitionsWithLag",
    "partitionLimitation", "scaleToZeroOnInvalidOffset", "sasl", "tls", "unsafeSsl", "version",
]  # fmt: skip
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "labels": _STR_MAP, "annotations": _STR_MAP},
    "additionalProperties": False,
}
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "name")},
                },
                **{k: {"type": "integer", "minimum": 0} for k in ("pollingInterval", "cooldownPeriod")},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "kafka"},
                            "metadata": {
                                "type": "object",
                                "required": ["bootstrapServers", "consumerGroup", "topic", "lagThreshold"],
                                "propertyNames": {"enum": _KAFKA_METADATA_KEYS},
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}
_PARAMETERS = {"enum": ["sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword"]}
TRIGGER_AUTHENTICATION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {
                            "parameter": _PARAMETERS,
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                    },
                },
                "env": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name"],
                        "additionalProperties": False,
                        "properties": {
                            "parameter": _PARAMETERS,
                            "name": {"type": "string"},
                            "containerName": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}
KEDA_SCHEMAS = {"ScaledObject": SCALED_OBJECT_SCHEMA, "TriggerAuthentication": TRIGGER_AUTHENTICATION_SCHEMA}


def _keda_objects(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in manifests if doc["apiVersion"].startswith("keda.sh/")]


def test_keda_objects_match_the_keda_schema(rendered: dict[str, str]) -> None:
    manifests = load_manifests(rendered["production"])
    objects = _keda_objects(manifests)
    assert {doc["kind"] for doc in objects} == set(KEDA_SCHEMAS)
    for doc in objects:
        jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
    # Every reference resolves within the release.
    auth_names = {d["metadata"]["name"] for d in objects if d["kind"] == "TriggerAuthentication"}
    deployments = {d["metadata"]["name"] for d in manifests if d["kind"] == "Deployment"}
    for doc in objects:
        if doc["kind"] == "ScaledObject":
            assert doc["spec"]["scaleTargetRef"]["name"] in deployments
            for trigger in doc["spec"]["triggers"]:
                if "authenticationRef" in trigger:
                    assert trigger["authenticationRef"]["name"] in auth_names


def test_keda_schema_rejects_a_misspelt_field(rendered: dict[str, str]) -> None:
    scaled = next(
        d for d in _keda_objects(load_manifests(rendered["production"])) if d["kind"] == "ScaledObject"
    )
    scaled["spec"]["triggers"][0]["metadata"]["consumerGroupp"] = scaled["spec"]["triggers"][0][
        "metadata"
    ].pop("consumerGroup")
    with pytest.raises(jsonschema.ValidationError, match="consumerGroup"):
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


# ---------------------------------------------------------------- settings drift


@dataclass(frozen=True)
class EnvField:
    """One environment variable (or family of them) a Settings class reads."""

    env: str  # the name, or a readable form of the pattern
    pattern: str  # regular expression over the upper-cased name
    path: str
    required: bool


_KEY_SEGMENT = "(?:(?!__)[A-Z0-9_])+"
_MAX_DEPTH = 4


def _members(annotation: Any) -> list[Any]:
    """The types an annotation may hold: Annotated and unions unwrapped."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _env_names(prefix: str, name: str, field: FieldInfo) -> list[str]:
    alias = field.validation_alias or field.alias
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasPath):
        return [str(alias.path[0])]
    if isinstance(alias, AliasChoices):
        return [c if isinstance(c, str) else str(c.path[0]) for c in alias.choices]
    return [prefix + name]


def _delimited(
    env: str, pattern: str, annotation: Any, delimiter: str, path: str, depth: int
) -> Iterator[EnvField]:
    """Names below ``env`` that ``env_nested_delimiter`` reaches: model fields and dict keys."""
    if depth > _MAX_DEPTH:
        return
    for member in _members(annotation):
        if typing.get_origin(member) is dict:
            value_type = typing.get_args(member)[1]
            yield from _delimited(
                f"{env}{delimiter}<KEY>",
                f"{pattern}{re.escape(delimiter)}{_KEY_SEGMENT}",
                value_type,
                delimiter,
                f"{path}[*]",
                depth + 1,
            )
        elif isinstance(member, type) and issubclass(member, BaseModel):
            for sub_name, sub_field in member.model_fields.items():
                sub_env = f"{env}{delimiter}{sub_name.upper()}"
                sub_pattern = f"{pattern}{re.escape(delimiter + sub_name.upper())}"
                yield EnvField(sub_env, sub_pattern, f"{path}.{sub_name}", False)
                yield from _delimited(
                    sub_env, sub_pattern, sub_field.annotation, delimiter, f"{path}.{sub_name}", depth + 1
                )


def walk_settings(cls: type[BaseSettings], path: str = "") -> Iterator[EnvField]:
    """Every env var ``cls`` reads, following nested settings and their own prefixes.

    A nested BaseSettings field with a default factory builds itself from its
    own prefix (``VIEWFINDER_KAFKA_*``); with ``env_nested_delimiter`` the
    outer name reaches into nested models and dict entries as well
    (``VIEWFINDER_TAGGER_CONNECTIONS__<NAME>__API_KEY``).
    """
    config = cls.model_config
    prefix = config.get("env_prefix", "")
    delimiter = config.get("env_nested_delimiter")
    for name, field in cls.model_fields.items():
        dotted = path + name
        for env in (n.upper() for n in _env_names(prefix, name, field)):
            yield EnvField(env, re.escape(env), dotted, field.is_required())
            if delimiter:
                yield from _delimited(env, re.escape(env), field.annotation, delimiter, dotted, 1)
        if field.default_factory is not None:
            for member in _members(field.annotation):
                if isinstance(member, type) and issubclass(member, BaseSettings):
                    yield from walk_settings(member, dotted + ".")
                    if issubclass(member, VectorStoreSettings):
                        for adapter in ADAPTER_SETTINGS:
                            yield from walk_settings(adapter, f"{dotted}.<{adapter.__name__}>.")


def settings_class(service: str) -> type[ServiceSettings]:
    """The one ServiceSettings subclass defined in ``viewfinder_<service>.config``."""
    module = importlib.import_module(f"viewfinder_{service}.config")
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, ServiceSettings) and obj.__module__ == module.__name__
    ]
    assert len(found) == 1, (
        f"{module.__name__} should define exactly one ServiceSettings subclass, found {found}"
    )
    return found[0]


def check_drift(
    cls: type[BaseSettings],
    env_names: set[str],
    pending: dict[str, str],
    also_reads: Sequence[type[BaseSettings]] = (),
) -> list[str]:
    """What the chart sets that ``cls`` (or ``also_reads``) does not read, and what they require that it does not set."""
    fields = [f for settings in (cls, *also_reads) for f in walk_settings(settings)]
    matchers = [re.compile(f.pattern) for f in fields]
    problems = []
    for name in sorted(env_names):
        if any(m.fullmatch(name.upper()) for m in matchers):
            if name in pending:
                problems.append(f"{name} is now a field of {cls.__name__}: remove it from PENDING_SETTINGS")
        elif name not in pending:
            problems.append(f"{name} is set by the chart but is no field of {cls.__name__}")
    set_upper = {n.upper() for n in env_names}
    for field in fields:
        if field.required and field.env not in set_upper:
            problems.append(f"{cls.__name__}.{field.path} is required but the chart does not set {field.env}")
    return problems


@dataclass
class ContainerEnv:
    """A container's environment as the chart renders it."""

    plain: dict[str, str]
    secret: set[str]

    @property
    def names(self) -> set[str]:
        return set(self.plain) | self.secret

    def as_process_env(self) -> dict[str, str]:
        """What the process would see, with a placeholder for each Secret value."""
        return {**self.plain, **dict.fromkeys(self.secret, SECRET_PLACEHOLDER)}


def container_env(container: dict[str, Any], config_maps: dict[str, dict[str, Any]]) -> ContainerEnv:
    env = ContainerEnv({}, set())
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in config_maps, f"envFrom refers to a ConfigMap the chart does not render: {name}"
        env.plain.update(config_maps[name].get("data", {}))
    for item in container.get("env", []):
        assert item["name"] not in env.plain, f"{item['name']} is set twice"
        if "valueFrom" in item:
            assert "secretKeyRef" in item["valueFrom"], item
            env.secret.add(item["name"])
        else:
            env.plain[item["name"]] = item["value"]
    return env


def service_envs(manifests: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], ContainerEnv]]:
    """Per service: its Deployment's main container and the environment it gets."""
    config_maps = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "ConfigMap"}
    result = {}
    for service, deployment in by_kind(manifests, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        result[service] = (container, container_env(container, config_maps))
    return result


def load_settings(
    cls: type[ServiceSettings], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> ServiceSettings:
    """``cls()`` as the pod would build it: only the chart's environment, no VIEWFINDER_* from this shell."""
    with monkeypatch.context() as patch:
        for key in list(os.environ):
            if key.upper().startswith("VIEWFINDER_"):
                patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        return cls()


_LOOPBACK = re.compile(r"(^|[/@\[])(127\.\d+\.\d+\.\d+|localhost|::1)([:\]/]|$)")


def loopback_settings(settings: ServiceSettings) -> list[str]:
    """Settings that still point at the pod itself: defaults for a laptop, wrong in a cluster.

    Backends that are not selected are left out: in a block with a ``kind``
    (``vectorstore.kind=pgvector``), a sub-block named after another kind
    (``vectorstore.milvus``) is not used.
    """
    found = []

    def visit(value: Any, path: str) -> None:
        if isinstance(value, dict):
            kind = value.get("kind")
            for key, item in value.items():
                if isinstance(kind, str) and isinstance(item, dict) and key != kind:
                    continue
                visit(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                visit(item, f"{path}[{index}]")
        elif isinstance(value, str) and _LOOPBACK.search(value):
            found.append(f"{path}={value}")

    visit(settings.model_dump(), "")
    return found


def settings_problems(
    service: str,
    container: dict[str, Any],
    env: ContainerEnv,
    monkeypatch: pytest.MonkeyPatch,
    cls: type[ServiceSettings] | None = None,
) -> list[str]:
    """Everything wrong between one service's rendered container and its Settings."""
    cls = cls or settings_class(service)
    problems = check_drift(
        cls, env.names, PENDING_SETTINGS.get(service, {}), READ_OUTSIDE_SETTINGS.get(service, ())
    )
    process_env = env.as_process_env()
    store = process_env.get(STORE_VAR)
    if store in PENDING_VECTOR_STORES.get(service, {}) and STORE_VAR not in PENDING_SETTINGS.get(service, {}):
        try:
            load_settings(cls, process_env, monkeypatch)
        except ValidationError as exc:
            others = [e for e in exc.errors() if e["loc"][-1:] != ("kind",)]
            problems += [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in others]
        else:
            problems.append(
                f"{cls.__name__} accepts vector store {store!r}: remove it from PENDING_VECTOR_STORES"
            )
        del process_env[STORE_VAR]
    try:
        settings = load_settings(cls, process_env, monkeypatch)
    except ValidationError as exc:
        return [*problems, f"{cls.__name__} rejects the chart's environment: {exc}"]
    # The port the container, the probes and the Service use is the one it listens on, on every interface.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if settings.grpc_port != ports["grpc"]:
        problems.append(f"grpc_port {settings.grpc_port} but containerPort {ports['grpc']}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if container[probe]["grpc"]["port"] != settings.grpc_port:
            problems.append(f"{probe} checks port {container[probe]['grpc']['port']}")
    problems += [f"{item} points at the pod itself" for item in loopback_settings(settings)]
    return problems


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_env_matches_each_service_settings(
    rendered: dict[str, str], value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = load_manifests(rendered[value_set])
    envs = service_envs(manifests)
    assert set(envs) == set(SERVICES)
    problems = []
    for service, (container, env) in envs.items():
        problems += [f"[{service}] {p}" for p in settings_problems(service, container, env, monkeypatch)]
        grace = by_kind(manifests, "Deployment")[service]["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        assert float(env.plain[f"VIEWFINDER_{service.upper()}_SHUTDOWN_GRACE_S"]) < grace
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_migration_job_env_matches_the_shared_settings(rendered: dict[str, str], value_set: str) -> None:
    # viewfinder-migrate reads ServiceSettings (no prefix of its own); the
    # topic step reads KafkaSettings, a nested part of it.
    (job,) = by_kind(load_manifests(rendered[value_set]), "Job").values()
    spec = job["spec"]["template"]["spec"]
    containers = spec.get("initContainers", []) + spec["containers"]
    assert len(containers) == 2
    for container in containers:
        env = container_env(container, {})
        problems = check_drift(ServiceSettings, env.names, {})
        assert not problems, "\n".join(problems)
        assert {"VIEWFINDER_DB_URL", "VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS"} <= env.names


def test_pending_entries_are_really_rendered(rendered: dict[str, str]) -> None:
    # The tolerance lists must not outlive their use: each entry is rendered by some value set.
    seen: dict[str, set[str]] = {service: set() for service in SERVICES}
    stores: dict[str, set[str]] = {service: set() for service in SERVICES}
    for text in rendered.values():
        for service, (_, env) in service_envs(load_manifests(text)).items():
            seen[service] |= env.names
            stores[service].add(env.plain.get(STORE_VAR, ""))
    for service, names in PENDING_SETTINGS.items():
        assert set(names) <= seen[service], (service, sorted(set(names) - seen[service]))
    for service, kinds in PENDING_VECTOR_STORES.items():
        assert set(kinds) <= stores[service], (service, sorted(set(kinds) - stores[service]))


def test_consumer_groups_agree_with_the_services(
    rendered: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # KEDA measures the lag of the group named in the chart; a service that
    # names its group in Settings must get that very name from the chart.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    envs = service_envs(load_manifests(rendered["production"]))
    scaled = by_kind(load_manifests(rendered["production"]), "ScaledObject")
    for service in SERVICES:
        cls = settings_class(service)
        group_fields = [name for name in cls.model_fields if name.endswith("group")]
        setting = values["services"][service].get("consumerGroupSetting", "")
        if not values["services"][service].get("consumes"):
            continue
        assert group_fields == ([setting] if setting else []), (
            f"{service}: Settings group fields {group_fields}, chart consumerGroupSetting {setting!r}"
        )
        if setting:
            settings = load_settings(
                cls, envs[service][1].as_process_env() | _supported_store(service), monkeypatch
            )
            group = getattr(settings, setting)
            assert group == f"viewfinder-{service}"
            if service in scaled:
                assert {t["metadata"]["consumerGroup"] for t in scaled[service]["spec"]["triggers"]} == {
                    group
                }


def _supported_store(service: str) -> dict[str, str]:
    return {STORE_VAR: "pgvector"} if service in ("embedder", "search") else {}


def _reads(service: str, env_name: str) -> bool:
    """Whether ``service``'s process reads ``env_name`` (nested settings and READ_OUTSIDE_SETTINGS included)."""
    classes = (settings_class(service), *READ_OUTSIDE_SETTINGS.get(service, ()))
    return any(re.fullmatch(f.pattern, env_name) for cls in classes for f in walk_settings(cls))


def _secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        item["name"]: (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for item in container.get("env", [])
        if "valueFrom" in item
    }


def test_every_reader_of_the_connection_store_shares_one_fernet_key(rendered: dict[str, str]) -> None:
    # What one service encrypts through ConnectionService another must open:
    # every service whose Settings read VIEWFINDER_CONNECTIONS_SECRET_KEY gets
    # it, from the one Secret, and never as a plain value.
    values = yaml.safe_load(PRODUCTION.read_text())["connections"]
    readers = {s for s in SERVICES if _reads(s, "VIEWFINDER_CONNECTIONS_SECRET_KEY")}
    assert {"ingest", "embedder"} <= readers
    manifests = load_manifests(rendered["production"])
    refs = {s: _secret_refs(c) for s, (c, _) in service_envs(manifests).items()}
    for service in SERVICES:
        key = refs[service].get("VIEWFINDER_CONNECTIONS_SECRET_KEY")
        if service in readers:
            assert key == (values["existingSecret"], "secret-key"), service
        else:
            assert key is None, service
    # Mounted for "k8s-secret:<name>/<key>" references, where the Settings look for them.
    secrets_dir = ConnectionSettings.model_fields["secrets_dir"].default
    deployments = by_kind(manifests, "Deployment")
    for service in readers:
        pod = deployments[service]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounted = {
            volumes[m["name"]]["secret"]["secretName"]: m["mountPath"]
            for m in container["volumeMounts"]
            if "secret" in volumes[m["name"]]
        }
        assert mounted == {name: f"{secrets_dir}/{name}" for name in values["mountSecrets"]}, service
    # Without a Secret nobody gets a key (only references are accepted then).
    for service, (_, env) in service_envs(load_manifests(rendered["default"])).items():
        assert "VIEWFINDER_CONNECTIONS_SECRET_KEY" not in env.names, service


def test_search_replicas_share_the_page_token_key(
    rendered: dict[str, str], render_process: RenderProcess
) -> None:
    for value_set in ("default", "production"):
        (container, _) = service_envs(load_manifests(rendered[value_set]))["search"]
        assert _secret_refs(container)["VIEWFINDER_SEARCH_PAGE_TOKEN_KEY"] == (
            "viewfinder-search",
            "page-token-key",
        ), value_set
    assert _reads("search", "VIEWFINDER_SEARCH_PAGE_TOKEN_KEY")
    # Each replica would draw its own key: a next-page token would fail on another replica.
    result = render_process(set_values=["pageTokens.existingSecret="])
    assert result.returncode != 0
    assert "pageTokens.existingSecret" in result.stderr
    single = render_process(
        set_values=["pageTokens.existingSecret=", "services.search.autoscaling.hpa.enabled=false"]
    )
    assert single.returncode == 0, single.stderr


def test_exporter_allowed_buckets_reach_its_settings(
    rendered: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A list value travels as JSON, which the Settings parse back into the list.
    wanted = yaml.safe_load(PRODUCTION.read_text())["services"]["exporter"]["config"]["allowed_buckets"]
    _, env = service_envs(load_manifests(rendered["production"]))["exporter"]
    settings = load_settings(settings_class("exporter"), env.as_process_env(), monkeypatch)
    assert settings.model_dump()["allowed_buckets"] == wanted
    _, env = service_envs(load_manifests(rendered["default"]))["exporter"]
    settings = load_settings(settings_class("exporter"), env.as_process_env(), monkeypatch)
    assert settings.model_dump()["allowed_buckets"] == []


def test_links_point_at_the_linked_service(rendered: dict[str, str]) -> None:
    manifests = load_manifests(rendered["default"])
    services = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "Service"}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    envs = service_envs(manifests)
    linked = 0
    for service, svc_values in values["services"].items():
        for field_name, target in svc_values.get("links", {}).items():
            address = envs[service][1].plain[f"VIEWFINDER_{service.upper()}_{field_name.upper()}"]
            host, _, port = address.rpartition(":")
            (service_port,) = (p for p in services[host]["spec"]["ports"] if p["name"] == "grpc")
            assert services[host]["metadata"]["labels"]["app.kubernetes.io/component"] == target
            assert int(port) == service_port["port"]
            linked += 1
    assert linked >= 2  # search -> embedder, tagger's offline connection -> embedder


def test_default_ports_agree_with_the_settings_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for service in SERVICES:
        default = settings_class(service).model_fields["grpc_port"].default
        assert values["services"][service]["grpcPort"] == default, service


def test_drift_check_flags_a_field_the_service_does_not_have(render: Render) -> None:
    manifests = load_manifests(render(set_values=["services.search.config.max_concurency=5"]))
    _, env = service_envs(manifests)["search"]
    assert env.plain["VIEWFINDER_SEARCH_MAX_CONCURENCY"] == "5"
    problems = check_drift(settings_class("search"), env.names, PENDING_SETTINGS.get("search", {}))
    assert problems == [
        "VIEWFINDER_SEARCH_MAX_CONCURENCY is set by the chart but is no field of SearchSettings"
    ]


def test_drift_check_flags_a_required_field_the_chart_does_not_set(render: Render) -> None:
    class SearchWithKey(settings_class("search")):  # type: ignore[misc]
        model_api_key: SecretStr

    _, env = service_envs(load_manifests(render()))["search"]
    assert check_drift(SearchWithKey, env.names, PENDING_SETTINGS.get("search", {})) == [
        "SearchWithKey.model_api_key is required but the chart does not set VIEWFINDER_SEARCH_MODEL_API_KEY"
    ]
    secret = json.dumps(
        [{"name": "VIEWFINDER_SEARCH_MODEL_API_KEY", "secretName": "model", "key": "api-key"}]
    )
    _, env = service_envs(load_manifests(render(set_json=[f"services.search.secretEnv={secret}"])))["search"]
    assert "VIEWFINDER_SEARCH_MODEL_API_KEY" in env.secret
    assert check_drift(SearchWithKey, env.names, PENDING_SETTINGS.get("search", {})) == []


def test_a_pending_setting_must_leave_the_list_once_it_is_real(render: Render) -> None:
    # The embedder reads VIEWFINDER_VECTORSTORE_KIND (issue 6): listed as pending, it is flagged.
    _, env = service_envs(load_manifests(render()))["embedder"]
    assert check_drift(settings_class("embedder"), env.names, {}) == []
    pending = {STORE_VAR: "issue 6: vector store selection (VectorStoreSettings)"}
    assert check_drift(settings_class("embedder"), env.names, pending) == [
        "VIEWFINDER_VECTORSTORE_KIND is now a field of EmbedderSettings: remove it from PENDING_SETTINGS"
    ]


def test_drift_check_reads_the_adapter_settings_of_the_chosen_store(render: Render) -> None:
    # VIEWFINDER_OPENSEARCH_* belong to OpenSearchSettings beside the adapter, not to
    # VectorStoreSettings: the check knows them, and still flags a misspelt one.
    manifests = load_manifests(
        render(
            EXAMPLES / "vectorstore-opensearch.yaml",
            set_values=["services.search.extraEnv.VIEWFINDER_OPENSEARCH_VERIFY_CERT=false"],
        )
    )
    _, env = service_envs(manifests)["search"]
    assert {"VIEWFINDER_OPENSEARCH_URI", "VIEWFINDER_OPENSEARCH_PASSWORD"} <= env.names
    assert check_drift(settings_class("search"), env.names, {}) == [
        "VIEWFINDER_OPENSEARCH_VERIFY_CERT is set by the chart but is no field of SearchSettings"
    ]


def test_a_pending_vector_store_must_leave_the_list_once_accepted(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Search accepts OpenSearch (issue 7); a Settings class from before it does not.
    class StoreBeforeIssue7(VectorStoreSettings):
        kind: typing.Literal["pgvector", "milvus"] = "pgvector"

    class SearchBeforeIssue7(settings_class("search")):  # type: ignore[misc]
        vectorstore: StoreBeforeIssue7 = Field(default_factory=StoreBeforeIssue7)

    container, env = service_envs(load_manifests(render(EXAMPLES / "vectorstore-opensearch.yaml")))["search"]
    assert settings_problems("search", container, env, monkeypatch) == []
    monkeypatch.setitem(PENDING_VECTOR_STORES, "search", {"opensearch": "issue 7: vector-store adapter"})
    assert settings_problems("search", container, env, monkeypatch, cls=SearchBeforeIssue7) == []
    assert settings_problems("search", container, env, monkeypatch) == [
        "SearchSettings accepts vector store 'opensearch': remove it from PENDING_VECTOR_STORES"
    ]


def test_settings_check_flags_a_service_left_pointing_at_itself(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the link, search would call an EmbedService on its own loopback.
    manifests = load_manifests(render(set_values=["services.search.links.embedder_target=null"]))
    container, env = service_envs(manifests)["search"]
    assert settings_problems("search", container, env, monkeypatch) == [
        "embedder_target=127.0.0.1:7053 points at the pod itself"
    ]


def test_walk_settings_follows_nested_prefixes_and_delimiters() -> None:
    fields = {f.env: f for f in walk_settings(settings_class("embedder"))}
    assert "VIEWFINDER_EMBEDDER_GRPC_PORT" in fields
    assert fields["VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS"].path == "kafka.bootstrap_servers"
    assert fields["VIEWFINDER_DB_PASSWORD"].path == "db.password"
    assert "VIEWFINDER_S3_SECRET_ACCESS_KEY" in fields

    class WithDelimiter(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="X_", env_nested_delimiter="__")

        class Inner(BaseModel):
            api_key: str = ""

        connections: dict[str, Inner] = {}

    matchers = [re.compile(f.pattern) for f in walk_settings(WithDelimiter)]
    assert any(m.fullmatch("X_CONNECTIONS__QWEN__API_KEY") for m in matchers)
    assert not any(m.fullmatch("X_CONNECTIONS__QWEN__API_KYE") for m in matchers)


# ---------------------------------------------------------------- scaling


def test_production_scales_each_stage_independently(rendered: dict[str, str]) -> None:
    values = yaml.safe_load(PRODUCTION.read_text())
    manifests = load_manifests(rendered["production"])
    deployments = by_kind(manifests, "Deployment")
    hpas = by_kind(manifests, "HorizontalPodAutoscaler")
    scaled = by_kind(manifests, "ScaledObject")
    assert set(deployments) == set(SERVICES)
    assert set(hpas) == {"search", "exporter"}
    assert set(scaled) == {"tagger", "embedder"}

    for service, hpa in hpas.items():
        wanted = values["services"][service]["autoscaling"]["hpa"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployments[service]["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] == wanted["minReplicas"]
        assert hpa["spec"]["maxReplicas"] == wanted["maxReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"]["averageUtilization"] == wanted["targetCPUUtilizationPercentage"]

    chart_services = yaml.safe_load((CHART / "values.yaml").read_text())["services"]
    for service, obj in scaled.items():
        wanted = values["services"][service]["autoscaling"]["keda"]
        # One trigger per consumed topic; replicas capped by the smallest partition count among them.
        consumed = [values["kafka"]["topics"][key] for key in chart_services[service]["consumes"]]
        partitions = min(topic["partitions"] for topic in consumed)
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == deployments[service]["metadata"]["name"]
        assert spec["minReplicaCount"] == wanted["minReplicas"]
        assert spec["maxReplicaCount"] == min(wanted["maxReplicas"], partitions)
        assert [t["metadata"]["topic"] for t in spec["triggers"]] == [topic["name"] for topic in consumed]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "kafka"
            assert trigger["metadata"]["consumerGroup"] == f"viewfinder-{service}"
            assert trigger["metadata"]["lagThreshold"] == str(wanted["lagThreshold"])
            assert trigger["metadata"]["allowIdleConsumers"] == "false"

    # An autoscaled Deployment leaves replicas to its autoscaler; the others are fixed.
    for service, deployment in deployments.items():
        if service in hpas or service in scaled:
            assert "replicas" not in deployment["spec"], service
        else:
            assert deployment["spec"]["replicas"] == values["services"][service]["replicas"]

    # Independent: every stage has its own bounds, resources and (for the two
    # readers of file-discovered) its own consumer group.
    bounds = [(h["spec"]["minReplicas"], h["spec"]["maxReplicas"]) for h in hpas.values()]
    bounds += [(s["spec"]["minReplicaCount"], s["spec"]["maxReplicaCount"]) for s in scaled.values()]
    assert len(set(bounds)) == len(bounds), bounds
    groups = [s["spec"]["triggers"][0]["metadata"]["consumerGroup"] for s in scaled.values()]
    assert len(set(groups)) == len(groups)
    requests = [
        json.dumps(d["spec"]["template"]["spec"]["containers"][0]["resources"], sort_keys=True)
        for d in deployments.values()
    ]
    assert len(set(requests)) == len(requests)


def test_keda_replicas_are_capped_at_the_partition_count(render: Render) -> None:
    manifests = load_manifests(
        render(
            set_values=[
                "services.tagger.autoscaling.keda.enabled=true",
                "services.tagger.autoscaling.keda.maxReplicas=100",
                "kafka.topics.fileDiscovered.partitions=7",
            ]
        )
    )
    assert by_kind(manifests, "ScaledObject")["tagger"]["spec"]["maxReplicaCount"] == 7


def test_hpa_and_keda_on_one_service_is_refused(render_process: RenderProcess) -> None:
    result = render_process(set_values=["services.search.autoscaling.keda.enabled=true"])
    assert result.returncode != 0
    assert "not both" in result.stderr


def test_keda_without_a_consumed_topic_is_refused(render_process: RenderProcess) -> None:
    result = render_process(
        set_values=[
            "services.exporter.autoscaling.hpa.enabled=false",
            "services.exporter.autoscaling.keda.enabled=true",
        ]
    )
    assert result.returncode != 0
    assert "needs a consumed topic" in result.stderr


def test_a_service_can_be_disabled_with_false(render: Render) -> None:
    # `false` must win over serviceDefaults (sprig's merge would treat it as empty).
    manifests = load_manifests(
        render(set_values=["services.exporter.enabled=false", "services.search.pdb.enabled=false"])
    )
    assert "exporter" not in by_kind(manifests, "Deployment")
    assert "search" not in by_kind(manifests, "PodDisruptionBudget")
    assert "ingest" in by_kind(manifests, "PodDisruptionBudget")


# ---------------------------------------------------------------- hardening


def _workload_pods(manifests: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in manifests:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_is_locked_down_and_has_resources(rendered: dict[str, str], value_set: str) -> None:
    manifests = load_manifests(rendered[value_set])
    pods = list(_workload_pods(manifests))
    assert len(pods) == len(SERVICES) + 1
    for where, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        for container in pod.get("initContainers", []) + pod["containers"]:
            ctx = container["securityContext"]
            label = f"{where}/{container['name']}"
            assert ctx["runAsNonRoot"] is True, label
            assert ctx["readOnlyRootFilesystem"] is True, label
            assert ctx["allowPrivilegeEscalation"] is False, label
            assert ctx["capabilities"]["drop"] == ["ALL"], label
            assert "add" not in ctx["capabilities"], label
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), label
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{label}: a read-only root needs a writable /tmp"


def test_each_service_has_its_own_account_budget_and_policy(rendered: dict[str, str]) -> None:
    manifests = load_manifests(rendered["default"])
    for kind in ("ServiceAccount", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"):
        assert set(by_kind(manifests, kind)) == set(SERVICES), kind
    services = [d for d in manifests if d["kind"] == "Service"]
    deployments = by_kind(manifests, "Deployment")
    for service in SERVICES:
        pod = deployments[service]["spec"]["template"]
        assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-viewfinder-{service}"
        selected = [s for s in services if s["spec"]["selector"].items() <= pod["metadata"]["labels"].items()]
        assert len(selected) == 2, f"{service}: a ClusterIP and a headless Service"
        container_ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        for svc in selected:
            # Every container port is served under its own name, gRPC first.
            ports = svc["spec"]["ports"]
            assert ports[0]["name"] == "grpc"
            assert {p["name"]: p["port"] for p in ports} == container_ports
            assert all(p["targetPort"] == p["name"] for p in ports)
        policy = by_kind(manifests, "NetworkPolicy")[service]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_credentials_only_come_from_secret_references(rendered: dict[str, str]) -> None:
    # No value set makes the chart render a Secret or put a credential in a ConfigMap.
    for value_set, text in rendered.items():
        manifests = load_manifests(text)
        assert not by_kind(manifests, "Secret"), value_set
        for config_map in by_kind(manifests, "ConfigMap").values():
            for key in config_map["data"]:
                assert not any(word in key for word in ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")), (
                    value_set,
                    key,
                )


# ---------------------------------------------------------------- the hook


def test_migration_hook_migrates_then_creates_every_topic(rendered: dict[str, str]) -> None:
    values = yaml.safe_load(PRODUCTION.read_text())
    manifests = load_manifests(rendered["production"])
    (job,) = by_kind(manifests, "Job").values()
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    spec = job["spec"]["template"]["spec"]
    (migrate,) = spec["initContainers"]
    (create_topics,) = spec["containers"]
    assert migrate["command"] == ["viewfinder-migrate"]
    assert entry_points(group="console_scripts", name="viewfinder-migrate"), (
        "the hook runs a command no package has"
    )
    python, flag, script, topics_json = create_topics["command"]
    assert (python, flag) == ("python", "-c")
    assert script == (CHART / "files" / "create_topics.py").read_text()
    topics = {t["name"]: t for t in json.loads(topics_json)}
    for topic in values["kafka"]["topics"].values():
        assert topics[topic["name"]]["partitions"] == topic["partitions"]
        assert topics[topic["name"]]["replicationFactor"] == topic["replicationFactor"]
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    for service, svc in chart_values["services"].items():
        for key in svc.get("consumes", []):
            assert f"{values['kafka']['topics'][key]['name']}.dlq.{service}" in topics
    ingest_image = by_kind(manifests, "Deployment")["ingest"]["spec"]["template"]["spec"]["containers"][0][
        "image"
    ]
    assert migrate["image"] == create_topics["image"] == ingest_image


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)
