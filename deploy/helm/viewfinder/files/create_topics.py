"""Creates viewfinder's Kafka topics; run by the chart's pre-install/pre-upgrade hook.

Usage: ``python create_topics.py '<json list of {"name", "partitions", "replicationFactor"}>'``
(the chart passes this file with ``python -c`` so the hook needs no ConfigMap).
The broker connection comes from the same ``VIEWFINDER_KAFKA_*`` settings the
services read.

Idempotent: a topic that exists is left alone. One that has fewer partitions
than asked for is reported, not grown: adding partitions moves keys (file ids)
to other partitions, which breaks per-file ordering for events in flight, so
it is a step to take deliberately (``kafka-topics --alter --partitions N``).
Exits 1 when a topic could not be created.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context

from viewfinder_common.settings import KafkaSettings

_NO_ERROR = 0
_TOPIC_ALREADY_EXISTS = 36


def _say(event: str, **fields: Any) -> None:
    # One JSON object per line, like the services' logs.
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")


def _admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="viewfinder-create-topics",
        security_protocol=settings.security_protocol,
        ssl_context=create_ssl_context() if settings.security_protocol.endswith("SSL") else None,
        sasl_mechanism=(settings.sasl_mechanism or "PLAIN").upper(),
        sasl_plain_username=settings.sasl_username,
        sasl_plain_password=password,
    )


async def create_topics(settings: KafkaSettings, wanted: list[dict[str, Any]]) -> int:
    """Creates the missing topics; returns the number of topics that failed."""
    admin = _admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t["name"] not in existing]
        failures = 0
        if missing:
            response = await admin.create_topics(
                [NewTopic(t["name"], int(t["partitions"]), int(t["replicationFactor"])) for t in missing],
                timeout_ms=30_000,
            )
            for topic, code, *message in response.topic_errors:
                if code == _NO_ERROR:
                    _say("topic_created", topic=topic)
                elif code == _TOPIC_ALREADY_EXISTS:  # another run won the race
                    _say("topic_exists", topic=topic)
                else:
                    failures += 1
                    _say("topic_failed", topic=topic, error_code=code, error=(message or [""])[0])
        present = [t for t in wanted if t["name"] in existing]
        if present:
            described = {d["topic"]: d for d in await admin.describe_topics([t["name"] for t in present])}
            for t in present:
                have = len(described.get(t["name"], {}).get("partitions", []))
                if have < int(t["partitions"]):
                    _say(
                        "topic_has_fewer_partitions", topic=t["name"], partitions=have, wanted=t["partitions"]
                    )
                else:
                    _say("topic_exists", topic=t["name"], partitions=have)
        return failures
    finally:
        await admin.close()


def main(argv: list[str]) -> int:
    """Entry point: argv[1] is the JSON list of topics."""
    if len(argv) != 2:
        sys.stderr.write(__doc__ or "")
        return 2
    wanted = json.loads(argv[1])
    failures = asyncio.run(create_topics(KafkaSettings(), wanted))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
