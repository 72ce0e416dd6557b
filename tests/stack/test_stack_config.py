"""The local stack's configuration, read from the environment (no server needed)."""

from __future__ import annotations

import pytest

from deploy.local.stack import StackConfig, StackError, default_shared_buffers, servers


def test_postgres_gets_the_configured_shared_buffers() -> None:
    cfg = StackConfig.from_env({"VF_PG_SHARED_BUFFERS": "256MB"})

    argv = servers(cfg)["postgres"].argv

    assert argv[argv.index("shared_buffers=256MB") - 1] == "-c"


def test_default_shared_buffers_is_a_quarter_of_memory_at_most_8gb() -> None:
    default = default_shared_buffers()

    assert StackConfig.from_env({}).pg_shared_buffers == default
    megabytes = int(default.removesuffix("MB"))
    assert 0 < megabytes <= 8 * 1024


def test_a_bad_port_is_refused_by_name() -> None:
    with pytest.raises(StackError, match="VF_PG_PORT='x'"):
        StackConfig.from_env({"VF_PG_PORT": "x"})
