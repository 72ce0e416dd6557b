"""The same searches with the vectors in Milvus Lite (the configured alternative store)."""

from __future__ import annotations

import random

import numpy as np

from viewfinder.v1 import search_pb2
from viewfinder_common.vectorstore import IndexSchema, VectorField, VectorRow
from viewfinder_common.vectorstore.milvus import MilvusVectorStore
from viewfinder_common.vectorstore.rows import exact_top_k
from viewfinder_search.adapters.catalogue import PostgresCatalogue
from viewfinder_search.domain.conditions import HasTag, TagSourceScope
from viewfinder_search.domain.planner import PlannerSettings, VectorRequest, planned_vector_search
from viewfinder_search.domain.sql import CatalogueFilter
from viewfinder_search.testing import SearchStack

EXAMPLE = (
    '(FileUpdateTime > "2025-02-28T00:00:00Z" AND FileUpdateTime < "2025-05-30T09:27:29Z") '
    'AND FileDir:"blue_car" AND NOT FileName="toyota.jpg" '
    'AND ((Tags.all="lane line" AND Tags.all="barrier gate") OR NOT Tags.user="rainy days") '
    'AND HAS Tags.ai AND Content:"a fallen water horse" AND TopK=100'
)


async def test_issue_example_over_milvus(milvus_search_stack: SearchStack) -> None:
    assert await milvus_search_stack.names(query=EXAMPLE) == ["honda", "dry"]


async def test_vector_query_with_conditions_over_milvus(milvus_search_stack: SearchStack) -> None:
    names = await milvus_search_stack.names(
        text="a fallen water horse", top_k=3, metadata=search_pb2.MetadataFilter(formats=["JPEG"])
    )
    assert names == ["honda", "toyota", "old"]
    assert await milvus_search_stack.names(image_uri="s3://queries/sky.jpg", score_threshold=0.9) == [
        "noai",
        "dry",
    ]


async def test_planner_is_exact_over_milvus(
    milvus_search_stack: SearchStack, milvus_store: MilvusVectorStore
) -> None:
    """Both planner paths on Milvus agree with brute force (a few hundred clustered vectors)."""
    stack = milvus_search_stack
    rng = np.random.default_rng(5)
    choice = random.Random(5)
    version = stack.catalogue.version_id
    async with stack.pool.acquire() as conn:
        dataset_id = stack.catalogue.dataset_id
        ids = []
        for i in range(400):
            file_id = await conn.fetchval(
                "INSERT INTO files (dataset_id, version_id, bucket, key, uri) VALUES ($1, $2, 'b', $3, $3) RETURNING id",
                dataset_id,
                version,
                f"bulk/{i}.jpg",
            )
            ids.append(str(file_id))
        tagged = {file_id for file_id in ids if choice.random() < 0.2}
        await conn.executemany(
            "INSERT INTO file_tags (file_id, tag, source) VALUES ($1, 'bulk', 'ai')", [(i,) for i in tagged]
        )
    centres = rng.normal(size=(8, 16))
    vectors = {i: (centres[n % 8] + 0.3 * rng.normal(size=16)).astype(np.float32) for n, i in enumerate(ids)}
    index = stack.index + "_bulk"
    await milvus_store.ensure_index(IndexSchema(index, [VectorField("v", 16)]))
    await milvus_store.upsert(index, [VectorRow(i, version, "e", {"v": vectors[i].tolist()}) for i in ids])
    catalogue_filter = CatalogueFilter(version, HasTag(TagSourceScope.AI, name="bulk"))
    passing = sorted(tagged)
    for settings in (PlannerSettings(), PlannerSettings(exact_candidate_floor=0, exact_candidate_limit=0)):
        for trial in range(5):
            query = (centres[trial] + 0.3 * rng.normal(size=16)).astype(np.float32)
            result = await planned_vector_search(
                milvus_store,
                PostgresCatalogue(stack.pool),
                VectorRequest(index, "v", query.tolist(), top_k=10),
                catalogue_filter,
                settings,
            )
            expected = exact_top_k(query, passing, np.stack([vectors[i] for i in passing]), 10, None)
            assert [h.file_id for h in result.hits] == [h.file_id for h in expected], (settings, trial)
