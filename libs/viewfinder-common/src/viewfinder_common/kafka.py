"""The FastStream Kafka broker factory and the dead-letter helper.

Every service builds its broker here, so security, batching and client ids are
set one way. FastStream has no built-in retry: a message a handler cannot
process goes, explicitly, to ``<topic>.dlq.<service>`` with its original bytes
and the reason in headers (DESIGN §2), and the consumer moves on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from viewfinder_common.logging import get_logger, redact_text
from viewfinder_common.settings import KafkaSettings

log = get_logger(__name__)

# Dead-letter headers: what failed, where it came from, and why.
DLQ_REASON = "x-dlq-reason"
DLQ_ERROR_TYPE = "x-dlq-error-type"
DLQ_SOURCE_TOPIC = "x-dlq-source-topic"
DLQ_SOURCE_PARTITION = "x-dlq-source-partition"
DLQ_SOURCE_OFFSET = "x-dlq-source-offset"
DLQ_SERVICE = "x-dlq-service"
DLQ_FAILED_AT_MS = "x-dlq-failed-at-ms"

_SASL = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


def _security(settings: KafkaSettings) -> BaseSecurity | None:
    if settings.security_protocol == "PLAINTEXT":
        return None
    use_ssl = settings.security_protocol.endswith("SSL")
    if settings.security_protocol.startswith("SASL"):
        mechanism = (settings.sasl_mechanism or "PLAIN").upper()
        if mechanism not in _SASL:
            raise ValueError(f"unsupported Kafka SASL mechanism {mechanism!r}; use one of {sorted(_SASL)}")
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
        return _SASL[mechanism](settings.sasl_username or "", password, use_ssl=use_ssl)
    return BaseSecurity(use_ssl=True)


def build_broker(settings: KafkaSettings, client_id: str) -> KafkaBroker:
    """A FastStream Kafka broker for one service process.

    ``linger_ms`` lets concurrent publishes share a produce request (measured
    here: ~8x the rate of one-by-one awaited sends, DESIGN §9).
    """
    return KafkaBroker(
        settings.bootstrap_servers,
        client_id=client_id,
        security=_security(settings),
        acks="all",
        linger_ms=5,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )


def dead_letter_topic(topic: str, service: str) -> str:
    """``<topic>.dlq.<service>``: one dead-letter topic per consumer of a topic."""
    return f"{topic}.dlq.{service}"


async def send_to_dead_letter(
    broker: KafkaBroker,
    *,
    service: str,
    source_topic: str,
    value: bytes,
    reason: str,
    error_type: str,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> str:
    """Publishes the original bytes with the failure in headers; returns the DLQ topic.

    The reason is redacted, so a credential inside an exception text never
    reaches the topic.
    """
    topic = dead_letter_topic(source_topic, service)
    headers = {
        DLQ_REASON: redact_text(reason)[:4000],
        DLQ_ERROR_TYPE: error_type,
        DLQ_SOURCE_TOPIC: source_topic,
        DLQ_SERVICE: service,
        DLQ_FAILED_AT_MS: str(int(time.time() * 1000)),
    }
    if partition is not None:
        headers[DLQ_SOURCE_PARTITION] = str(partition)
    if offset is not None:
        headers[DLQ_SOURCE_OFFSET] = str(offset)
    if extra_headers:
        headers.update(extra_headers)
    await broker.publish(value, topic, key=key, headers=headers)
    log.warning(
        "dead_lettered",
        dlq_topic=topic,
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        error_type=error_type,
        reason=reason,
    )
    return topic
