"""Addresses of the running local stack (``make up``), for the tests in this folder.

They come from ``<stack dir>/stack.env``, written by ``deploy/local/stack.py up``
(stack dir: ``VF_STACK_DIR``, default ``<repo>/.local``); a ``VIEWFINDER_*``
variable in the environment overrides the file, so the same tests can run
against servers started some other way.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pytest

from deploy.local.stack import StackConfig, load_env


@dataclass(frozen=True)
class StackAddresses:
    """Where each server of the stack answers, and the names the stack created."""

    kafka_bootstrap: str
    db_url: str
    s3_endpoint_url: str
    s3_region: str
    s3_access_key_id: str
    s3_secret_access_key: str
    milvus_uri: str
    demo_bucket: str
    storage_events_topic: str


@pytest.fixture(scope="session")
def stack() -> StackAddresses:
    """The running stack; fails (not skips) when it is not up, so a missing stack is seen."""
    values = dict(os.environ)
    load_env(values)
    env_file = StackConfig.from_env(values).env_file
    try:
        return StackAddresses(
            kafka_bootstrap=values["VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS"],
            db_url=values["VIEWFINDER_DB_URL"],
            s3_endpoint_url=values["VIEWFINDER_S3_ENDPOINT_URL"],
            s3_region=values["VIEWFINDER_S3_REGION"],
            s3_access_key_id=values["VIEWFINDER_S3_ACCESS_KEY_ID"],
            s3_secret_access_key=values["VIEWFINDER_S3_SECRET_ACCESS_KEY"],
            milvus_uri=values["VIEWFINDER_MILVUS_URI"],
            demo_bucket=values["VIEWFINDER_DEMO_BUCKET"],
            storage_events_topic=values["VIEWFINDER_RELAY_TOPIC"],
        )
    except KeyError as missing:
        pytest.fail(f"local stack not configured ({missing} unset, no {env_file}): run `make up` first")


@pytest.fixture
def unique_name() -> str:
    """A fresh name for a topic, group, bucket, collection or table: tests never share state."""
    return f"vf_test_{uuid.uuid4().hex[:12]}"
