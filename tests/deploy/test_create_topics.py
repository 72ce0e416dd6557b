"""The chart hook's topic step, run exactly as the Job runs it, against the local broker.

``deploy/helm/viewfinder/files/create_topics.py`` goes to the hook container as
``python -c <script> <topics json>``; here it runs the same way against the
local stack's broker (``make up``), so the hook is tested before any cluster
sees it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "helm" / "viewfinder" / "files" / "create_topics.py"

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def bootstrap() -> str:
    """The local stack's broker; fails (not skips) when the stack is not up."""
    env_file = Path(os.environ.get("VF_STACK_DIR") or REPO / ".local") / "stack.env"
    values = {}
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[key.strip()] = value.strip()
    address = os.environ.get("VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS") or values.get(
        "VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS"
    )
    if not address:
        pytest.fail(
            f"local stack not configured (no VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS, no {env_file}): run `make up`"
        )
    return address


def run_hook(bootstrap: str, topics: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWFINDER_")}
    env["VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.read_text(), json.dumps(topics)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, events


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def test_hook_creates_topics_once_and_never_shrinks_or_grows_them(bootstrap: str) -> None:
    stem = f"vf_test_{uuid.uuid4().hex[:12]}"
    wanted = [
        {"name": f"{stem}.file-discovered", "partitions": 3, "replicationFactor": 1},
        {"name": f"{stem}.file-discovered.dlq.tagger", "partitions": 1, "replicationFactor": 1},
    ]
    names = [str(t["name"]) for t in wanted]

    code, events = run_hook(bootstrap, wanted)
    assert code == 0, events
    assert {(e["event"], e["topic"]) for e in events} == {("topic_created", n) for n in names}
    assert await partition_counts(bootstrap, names) == {names[0]: 3, names[1]: 1}

    # A second install/upgrade changes nothing.
    code, events = run_hook(bootstrap, wanted)
    assert code == 0, events
    assert {(e["event"], e["topic"]) for e in events} == {("topic_exists", n) for n in names}

    # Asking for more partitions is reported, not applied (keys would move).
    code, events = run_hook(bootstrap, [{**wanted[0], "partitions": 6}])
    assert code == 0, events
    assert events == [
        {"event": "topic_has_fewer_partitions", "topic": names[0], "partitions": 3, "wanted": 6}
    ]
    assert (await partition_counts(bootstrap, names[:1]))[names[0]] == 3
