"""Checks and conversions every vector-store adapter shares (no I/O).

Adapters turn ``VectorRow`` batches into column arrays here, so that each one
rejects the same bad input with the same message before anything is written,
and the exact (brute-force) ranking used by adapters without a native exact
mode is computed the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from viewfinder_common.vectorstore import (
    IndexSchema,
    InvalidVectorInput,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorRow,
    canonical_id,
)

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RowColumns:
    """A batch of rows as columns: one float32 matrix (rows x dim) per vector field."""

    file_ids: list[str]
    dataset_version_ids: list[str]
    etags: list[str]
    vectors: dict[str, FloatMatrix]

    def __len__(self) -> int:
        return len(self.file_ids)

    def chunks(self, size: int) -> list[RowColumns]:
        """Consecutive slices of at most ``size`` rows."""
        return [
            RowColumns(
                self.file_ids[start : start + size],
                self.dataset_version_ids[start : start + size],
                self.etags[start : start + size],
                {name: matrix[start : start + size] for name, matrix in self.vectors.items()},
            )
            for start in range(0, len(self), size)
        ]


def _checked_matrix(what: str, values: FloatMatrix, dim: int) -> FloatMatrix:
    """``values`` if every row is finite with a non-zero norm (cosine is undefined otherwise)."""
    if values.ndim != 2 or values.shape[1] != dim:
        raise InvalidVectorInput(f"{what}: expected {dim} dimensions, got shape {values.shape}")
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        raise InvalidVectorInput(f"{what}: row {int(np.argmin(finite))} has NaN or infinite values")
    zero = ~np.any(values != 0.0, axis=1)
    if zero.any():
        raise InvalidVectorInput(f"{what}: row {int(np.argmax(zero))} is the zero vector (no direction)")
    return values


def row_columns(schema: IndexSchema, rows: Sequence[VectorRow]) -> RowColumns:
    """Validates rows against the schema and returns them as columns.

    Several rows for one file id keep the last one (an upsert of a batch must
    leave exactly the state its last row describes).
    """
    last_by_id: dict[str, VectorRow] = {}
    for row in rows:
        file_id = canonical_id(row.file_id)
        last_by_id.pop(file_id, None)  # re-insert so the order follows the last occurrence
        last_by_id[file_id] = row
    expected = {f.name for f in schema.fields}
    file_ids = list(last_by_id)
    dataset_version_ids: list[str] = []
    etags: list[str] = []
    for file_id, row in last_by_id.items():
        dataset_version_ids.append(canonical_id(row.dataset_version_id, "dataset version id"))
        if not isinstance(row.etag, str):
            raise InvalidVectorInput(f"file {file_id}: etag must be text, got {type(row.etag).__name__}")
        etags.append(row.etag)
        if set(row.vectors) != expected:
            raise InvalidVectorInput(
                f"file {file_id}: index {schema.name!r} needs vector fields {sorted(expected)}, "
                f"the row has {sorted(row.vectors)}"
            )
    vectors: dict[str, FloatMatrix] = {}
    for vector_field in schema.fields:
        try:
            matrix = np.asarray(
                [np.asarray(row.vectors[vector_field.name], dtype=np.float32) for row in last_by_id.values()],
                dtype=np.float32,
            ).reshape(len(last_by_id), -1)
        except ValueError as err:
            raise InvalidVectorInput(
                f"vector field {vector_field.name!r}: rows do not all have {vector_field.dim} numbers ({err})"
            ) from err
        vectors[vector_field.name] = _checked_matrix(
            f"vector field {vector_field.name!r}", matrix, vector_field.dim
        )
    return RowColumns(file_ids, dataset_version_ids, etags, vectors)


@dataclass(frozen=True)
class CheckedQuery:
    """A query whose field, vector and filter ids passed validation."""

    vector: FloatMatrix  # shape (dim,)
    dataset_version_id: str
    file_ids: list[str] | None
    top_k: int
    score_threshold: float | None
    search_breadth: int


def checked_query(schema: IndexSchema, query: VectorQuery, default_breadth: int) -> CheckedQuery:
    """Validates a query against the index schema; ids in canonical form, de-duplicated."""
    vector_field = schema.vector_field(query.vector_field)
    if query.top_k < 1:
        raise InvalidVectorInput(f"top_k must be at least 1, got {query.top_k}")
    if query.search_breadth is not None and query.search_breadth < 1:
        raise InvalidVectorInput(f"search_breadth must be at least 1, got {query.search_breadth}")
    if query.score_threshold is not None and not np.isfinite(query.score_threshold):
        raise InvalidVectorInput(f"score_threshold must be a finite number, got {query.score_threshold}")
    vector = np.asarray(query.vector, dtype=np.float32).reshape(1, -1)
    _checked_matrix(f"query vector for field {vector_field.name!r}", vector, vector_field.dim)
    file_ids = checked_file_ids(query.filter)
    return CheckedQuery(
        vector=vector[0],
        dataset_version_id=canonical_id(query.filter.dataset_version_id, "dataset version id"),
        file_ids=file_ids,
        top_k=query.top_k,
        score_threshold=query.score_threshold,
        search_breadth=max(query.search_breadth or default_breadth, query.top_k),
    )


def checked_file_ids(vector_filter: VectorFilter) -> list[str] | None:
    """The filter's file ids in canonical form without duplicates (None: unrestricted)."""
    if vector_filter.file_ids is None:
        return None
    return list(dict.fromkeys(canonical_id(file_id) for file_id in vector_filter.file_ids))


def exact_top_k(
    query: FloatMatrix,
    file_ids: Sequence[str],
    vectors: FloatMatrix,
    top_k: int,
    score_threshold: float | None,
) -> list[VectorHit]:
    """Brute-force cosine top-k over candidate rows, ties broken by file id.

    Scores are computed in float64 so that the exact path is the reference the
    ANN paths are measured against.
    """
    if len(file_ids) == 0:
        return []
    candidates = vectors.astype(np.float64, copy=False)
    q = query.astype(np.float64)
    scores = (candidates @ q) / (np.linalg.norm(candidates, axis=1) * np.linalg.norm(q))
    eligible = np.arange(len(file_ids))
    if score_threshold is not None:
        eligible = eligible[scores >= score_threshold]
    if len(eligible) > top_k:
        # Everything at least as close as the k-th best, ties included; the
        # sort below then cuts exactly k with the file-id tie break.
        kth_best = np.partition(scores[eligible], len(eligible) - top_k)[len(eligible) - top_k]
        eligible = eligible[scores[eligible] >= kth_best]
    order = sorted(eligible.tolist(), key=lambda i: (-scores[i], file_ids[i]))
    return [VectorHit(file_id=file_ids[i], score=float(scores[i])) for i in order[:top_k]]
