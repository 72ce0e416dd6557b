"""The adapters' shared validation and exact ranking, without I/O."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from viewfinder_common.vectorstore import (
    IndexSchema,
    InvalidVectorInput,
    VectorField,
    VectorFilter,
    VectorQuery,
    VectorRow,
    canonical_id,
    validate_schema,
)
from viewfinder_common.vectorstore.rows import checked_query, exact_top_k, row_columns

SCHEMA = IndexSchema("idx", [VectorField("visual", 3), VectorField("semantic", 2)])


def row(file_id: str, visual: list[float], semantic: list[float] | None = None, etag: str = "e") -> VectorRow:
    return VectorRow(
        file_id, str(uuid.UUID(int=7)), etag, {"visual": visual, "semantic": semantic or [1.0, 0.0]}
    )


def test_row_columns_stack_fields_and_keep_the_last_row_per_file() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    columns = row_columns(
        SCHEMA,
        [row(a, [1, 0, 0], etag="old"), row(b, [0, 1, 0]), row(a.upper(), [0, 0, 1], etag="new")],
    )
    assert columns.file_ids == [b, a]
    assert columns.etags == ["e", "new"]
    assert columns.vectors["visual"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert columns.vectors["semantic"].shape == (2, 2)
    assert [len(chunk) for chunk in columns.chunks(1)] == [1, 1]


def test_row_columns_name_the_bad_field_and_row() -> None:
    with pytest.raises(InvalidVectorInput, match=r"'visual'.*row 1 is the zero vector"):
        row_columns(SCHEMA, [row(str(uuid.uuid4()), [1, 0, 0]), row(str(uuid.uuid4()), [0, 0, 0])])
    with pytest.raises(InvalidVectorInput, match=r"'semantic'.*expected 2 dimensions"):
        row_columns(SCHEMA, [row(str(uuid.uuid4()), [1, 0, 0], [1, 2, 3])])


def test_exact_top_k_orders_by_score_then_file_id_and_applies_the_threshold() -> None:
    ids = ["d", "c", "b", "a"]
    vectors = np.array([[1, 0], [1, 1], [1, 1], [0, 1]], dtype=np.float32)
    query = np.array([1, 0], dtype=np.float32)
    hits = exact_top_k(query, ids, vectors, top_k=3, score_threshold=None)
    assert [h.file_id for h in hits] == ["d", "b", "c"]  # b and c tie: file id breaks it
    assert hits[0].score == pytest.approx(1.0)
    assert [h.file_id for h in exact_top_k(query, ids, vectors, top_k=10, score_threshold=0.5)] == [
        "d",
        "b",
        "c",
    ]
    assert exact_top_k(query, [], vectors[:0], top_k=3, score_threshold=None) == []


def test_checked_query_sets_the_breadth_to_at_least_top_k_and_canonicalises_ids() -> None:
    file_id = str(uuid.uuid4())
    query = VectorQuery(
        "visual", [1, 2, 3], 50, VectorFilter(str(uuid.UUID(int=1)), [file_id.upper(), file_id])
    )
    checked = checked_query(SCHEMA, query, default_breadth=40)
    assert checked.search_breadth == 50
    assert checked.file_ids == [file_id]
    wider = checked_query(
        SCHEMA, VectorQuery("visual", [1, 2, 3], 5, VectorFilter(str(uuid.UUID(int=1)))), 40
    )
    assert (wider.search_breadth, wider.file_ids) == (40, None)


def test_names_and_ids_are_validated() -> None:
    assert canonical_id("{12345678-1234-5678-1234-567812345678}") == "12345678-1234-5678-1234-567812345678"
    for bad in ("", "1' OR '1'='1", "12345678"):
        with pytest.raises(InvalidVectorInput, match="not a UUID"):
            canonical_id(bad)
    with pytest.raises(InvalidVectorInput, match="updated_at"):
        validate_schema(IndexSchema("idx", [VectorField("updated_at", 3)]))
