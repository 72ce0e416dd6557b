"""Structured logging for every service.

structlog renders JSON lines (or a console format for people) with the
service name bound; standard-library loggers (aiokafka, grpc, asyncpg) are
routed through the same renderer. A last processor masks anything that looks
like a credential, so a secret passed by mistake does not reach the log.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|api[_-]?key|authorization|credential)", re.I)
# key=value / "key": "value" pairs and bearer tokens inside free text.
_SECRET_IN_TEXT = re.compile(
    r"(?P<k>(?:pass(?:word)?|secret|token|api[_-]?key|authorization)\"?\s*[=:]\s*\"?)(?P<v>[^\s\",}&]+)"
    r"|(?P<b>Bearer\s+)(?P<bv>[A-Za-z0-9._~+/=-]+)",
    re.I,
)
_URL_PASSWORD = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]+:)(?P<pw>[^@\s]+)(?P<at>@)", re.I)

MASK = "***"


def redact_text(text: str) -> str:
    """Masks credentials inside free text: ``password=…``, ``Bearer …``, ``user:pw@`` in URLs."""

    def _sub(match: re.Match[str]) -> str:
        if match.group("k") is not None:
            return match.group("k") + MASK
        return match.group("b") + MASK

    text = _URL_PASSWORD.sub(lambda m: m.group("pre") + MASK + m.group("at"), text)
    return _SECRET_IN_TEXT.sub(_sub, text)


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key) and value is not None:
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: masks secret-looking fields and secrets inside strings."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    """Sets up structlog and the standard library's root logger once per process."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger; bind fields (dataset, file_id, trace_id) per call site."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
