"""Secrets never reach the log: the redaction used by every service's logger."""

from __future__ import annotations

import json
import logging

import pytest

from viewfinder_common.logging import configure_logging, get_logger, redact_text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connect postgresql://app:s3cr3t-pw@db:5432/x failed", "s3cr3t-pw"),
        ("headers={'Authorization': 'Bearer sk-live-abcdef123'}", "sk-live-abcdef123"),
        ('{"api_key": "dashscope-KEY-42"}', "dashscope-KEY-42"),
        ("retry with password=hunter2&user=x", "hunter2"),
        ("token: eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
    ],
)
def test_redact_text_masks_credentials(text: str, secret: str) -> None:
    redacted = redact_text(text)
    assert secret not in redacted
    assert "***" in redacted


def test_redact_text_keeps_ordinary_text() -> None:
    text = "listed 1000 keys under s3://bucket/cars/ in 0.4 s"
    assert redact_text(text) == text


@pytest.mark.usefixtures("isolated_logging")
def test_logger_masks_secret_fields_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", "INFO", json=True)
    log = get_logger("test")
    log.info("calling model", api_key="sk-abc-123", url="https://user:pw123@host/v1", file_id="f1")
    logging.getLogger("aiokafka").warning("auth failed for password=topsecret")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2
    dumped = json.dumps(lines)
    for secret in ("sk-abc-123", "pw123", "topsecret"):
        assert secret not in dumped
    assert lines[0]["file_id"] == "f1"
    assert lines[0]["service"] == "test"
    assert lines[0]["api_key"] == "***"
