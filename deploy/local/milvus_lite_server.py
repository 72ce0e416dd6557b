"""Runs the Milvus Lite server with a keepalive policy like a real Milvus server's.

pymilvus pings its server every 10 s even while idle
(``grpc.keepalive_permit_without_calls``). A Milvus server accepts that; the
Milvus Lite server keeps gRPC's default policy, answers the pings with GOAWAY
"too_many_pings", and a client's connection dies in the middle of a long test
session. This wrapper starts the same server with the pings permitted.

Usage is the ``milvus-lite`` command's: ``python milvus_lite_server.py server --data-dir D --port P``.
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
from milvus_lite import cmdline

_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
]
_grpc_server = grpc.server


def _server_permitting_keepalive(
    thread_pool: Any, handlers: Any = None, interceptors: Any = None, options: Any = None, **kwargs: Any
) -> Any:
    return _grpc_server(
        thread_pool, handlers, interceptors, [*(options or []), *_KEEPALIVE_OPTIONS], **kwargs
    )


if __name__ == "__main__":
    # This process only runs the Milvus Lite server, which builds its gRPC server with grpc.server.
    grpc.server = _server_permitting_keepalive  # type: ignore[assignment]  # same call, wider options
    sys.exit(cmdline.main(sys.argv[1:]))
