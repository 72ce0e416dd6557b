"""The shared VectorStore contract suite, run against the contract-fake adapters.

Every ``test_*`` of ``tests/vectorstore/test_contract.py`` (the suite pgvector
and Milvus pass on real servers) is collected here again, so the same
behaviour checks — ensure_index create / validate / SchemaMismatch,
idempotent upsert, delete, filtered top-k with threshold, named fields,
count, exact == brute force, ANN never short — run under this directory's
``backend`` fixture: Elasticsearch, OpenSearch and Lindorm against
``FakeSearchEngine``, Hologres against PostgreSQL with the Proxima shim.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

# Test directories are not packages (and conftest cannot be imported under
# --import-mode=importlib), so the shared suite is loaded by path.
_spec = importlib.util.spec_from_file_location(
    "_vectorstore_shared_test_contract", Path(__file__).parent.parent / "vectorstore" / "test_contract.py"
)
assert _spec is not None
assert _spec.loader is not None
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
globals().update({name: value for name, value in vars(_shared).items() if name.startswith("test_")})
