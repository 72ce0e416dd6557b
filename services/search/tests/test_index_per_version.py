"""A version is searched in the index that holds its vectors.

An index switch builds the new index from the dataset's latest version only;
older versions keep their vectors in the index they were embedded into. Here
the fixture's index (both versions) plays the old index and a second pgvector
index holding version 2 only is the active one, as after a switch.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from viewfinder_common.vectorstore import IndexSchema, VectorField, VectorRow
from viewfinder_search.testing import DIM, FIELD, FILES, SearchStack

QUERY = "a fallen water horse"


async def _register(
    stack: SearchStack, index: str, versions: set[int], *, active: bool, state: str, age: timedelta
) -> None:
    """The embedder's catalogue rows of an index holding the vectors of ``versions``' files."""
    catalogue = stack.catalogue
    async with stack.pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO embedding_indexes (name, dataset_id, model_connection, model_id, model_version,
                                           vector_store_connection, vector_fields, state, active, created_at)
            VALUES ($1, $2, 'offline', 'test-model', '1', 'pgvector', '[]', $3, $4, $5)
            """,
            index,
            uuid.UUID(catalogue.dataset_id),
            state,
            active,
            datetime.now(UTC) - age,
        )
        await conn.executemany(
            """
            INSERT INTO embedding_index_files (index_name, file_id, dataset_version_id, etag, model_version)
            VALUES ($1, $2, $3, $4, '1')
            """,
            [
                (
                    index,
                    uuid.UUID(catalogue.file_ids[name]),
                    uuid.UUID(catalogue.version_ids[spec.version]),
                    f"etag-{name}",
                )
                for name, spec in FILES.items()
                if spec.version in versions
            ],
        )


async def _switched(stack: SearchStack) -> str:
    """Registers the fixture's index as the old one and builds a new active index of version 2."""
    new_index = f"{stack.index}_new"
    await stack.store.ensure_index(IndexSchema(new_index, [VectorField(FIELD, DIM)]))
    await stack.store.upsert(
        new_index,
        [
            VectorRow(
                stack.catalogue.file_ids[name],
                stack.catalogue.version_ids[2],
                f"etag-{name}",
                {FIELD: spec.vector},
            )
            for name, spec in FILES.items()
            if spec.version == 2
        ],
    )
    await _register(stack, stack.index, {1, 2}, active=False, state="ready", age=timedelta(hours=1))
    await _register(stack, new_index, {2}, active=True, state="ready", age=timedelta(0))
    # Asked for no index in particular, the embedder answers with the active one.
    stack.embed.index_name = new_index
    return new_index


async def test_an_older_version_is_searched_in_the_index_that_holds_it(search_stack: SearchStack) -> None:
    stack = search_stack
    before = await stack.names(text=QUERY, top_k=3)
    new_index = await _switched(stack)

    after = await stack.names(text=QUERY, top_k=3)

    assert after == before == ["honda", "toyota", "old"]
    assert stack.embed.requests[-1] == (stack.catalogue.dataset_id, stack.index, QUERY)
    # The latest version is in the active index.
    latest = await stack.names(text=QUERY, top_k=3, dataset_version_id=stack.catalogue.version_ids[2])
    assert latest == ["other_version"]
    assert stack.embed.requests[-1] == (stack.catalogue.dataset_id, new_index, QUERY)


async def test_a_failed_build_is_never_searched_and_a_named_index_wins(search_stack: SearchStack) -> None:
    stack = search_stack
    new_index = await _switched(stack)
    async with stack.pool.acquire() as conn:
        await conn.execute("UPDATE embedding_indexes SET state = 'failed' WHERE name = $1", stack.index)

    # Nothing usable holds version 1: the embedder's choice (the active index), which has none of it.
    assert await stack.names(text=QUERY, top_k=3) == []
    assert stack.embed.requests[-1] == (stack.catalogue.dataset_id, "", QUERY)
    # A request that names its index gets that index.
    named = await stack.names(
        text=QUERY, top_k=1, index_name=new_index, dataset_version_id=stack.catalogue.version_ids[2]
    )
    assert named == ["other_version"]
    assert stack.embed.requests[-1] == (stack.catalogue.dataset_id, new_index, QUERY)
