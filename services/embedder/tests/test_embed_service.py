"""EmbedService over gRPC on the running service: query embedding, indexes, index jobs."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest

from viewfinder.v1 import common_pb2, embedding_pb2
from viewfinder_common.settings import DatabaseSettings
from viewfinder_common.vectorstore import VectorFilter, VectorQuery
from viewfinder_common.vectorstore.factory import VectorStoreSettings, create_vector_store
from viewfinder_embedder.domain.indexes import default_index_name

pytestmark = pytest.mark.stack

TERMINAL = {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}


async def _wait_for_job(stub: Any, job_id: str, helpers: Any) -> embedding_pb2.IndexJob:
    async def done() -> Any:
        reply = await stub.GetIndexJob(embedding_pb2.GetIndexJobRequest(job_id=job_id), timeout=10)
        return reply.job if reply.job.job.state in TERMINAL else None

    job: embedding_pb2.IndexJob = await helpers.eventually(done, "index job finished", timeout_s=120)
    return job


def _norm(values: Any) -> float:
    return math.sqrt(sum(v * v for v in values))


async def _status(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    code: grpc.StatusCode = raised.value.code()
    return code


async def test_embed_service_round_trip(
    catalogue: Any, bucket: Any, start_embedder: Any, helpers: Any
) -> None:
    keys = [f"pics/{n}.png" for n in range(4)]
    images = [helpers.image_bytes(100 + n) for n in range(4)]
    etags = [await bucket(key, data) for key, data in zip(keys, images, strict=True)]
    poison_etag = await bucket("pics/broken.png", helpers.poison)
    file_ids = await catalogue.add_files([*zip(keys, etags, strict=True), ("pics/broken.png", poison_etag)])

    async with start_embedder() as embedder:
        stub = embedder.stub
        # Before any index: the model a new index would use.
        text = await stub.EmbedText(
            embedding_pb2.EmbedTextRequest(dataset_id=catalogue.dataset_id, text="a red circle"), timeout=30
        )
        assert [v.field for v in text.vectors] == ["semantic"]
        assert len(text.vectors[0].values) == 384
        assert abs(_norm(text.vectors[0].values) - 1.0) < 1e-4
        assert text.model.id == "offline-efficientnet-lite0-minilm"
        assert text.model.version
        assert text.index_name == ""

        started = await stub.StartIndexJob(
            embedding_pb2.StartIndexJobRequest(
                dataset_version_id=catalogue.version_id, mode=common_pb2.JOB_MODE_FULL, max_concurrency=4
            ),
            timeout=30,
        )
        assert started.job.job.kind == common_pb2.JOB_KIND_INDEX
        job = await _wait_for_job(stub, started.job.job.id, helpers)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job
        assert job.job.progress.total_items == 5
        assert job.job.progress.processed_items == 5
        assert (job.counts.embedded, job.counts.failed, job.counts.skipped) == (4, 1, 0)
        assert [e.file_id for e in job.job.recent_errors] == [file_ids[4]]
        assert "cannot decode" in job.job.recent_errors[0].reason
        assert job.max_concurrency == 4

        index_name = default_index_name(catalogue.dataset_id)
        index = (await stub.GetIndex(embedding_pb2.GetIndexRequest(index_name=index_name), timeout=10)).index
        assert index.row_count == 4
        assert index.active
        assert index.dataset_id == catalogue.dataset_id
        assert [(f.name, f.dimension, list(f.query_kinds)) for f in index.fields] == [
            ("visual", 1280, [embedding_pb2.QUERY_KIND_IMAGE]),
            ("semantic", 384, [embedding_pb2.QUERY_KIND_TEXT]),
        ]
        listed = await stub.ListIndexes(
            embedding_pb2.ListIndexesRequest(dataset_id=catalogue.dataset_id), timeout=10
        )
        assert [i.name for i in listed.indexes] == [index_name]

        # A query image finds its own file first, from bytes and from a bucket URI.
        store = await create_vector_store(
            VectorStoreSettings(kind="pgvector"), db=DatabaseSettings(url=catalogue.url)
        )
        try:
            for n, request in [
                (0, embedding_pb2.EmbedImageRequest(dataset_id=catalogue.dataset_id, image_bytes=images[0])),
                (
                    2,
                    embedding_pb2.EmbedImageRequest(
                        dataset_id=catalogue.dataset_id, image_uri=f"s3://{catalogue.bucket}/{keys[2]}"
                    ),
                ),
            ]:
                reply = await stub.EmbedImage(request, timeout=30)
                assert reply.index_name == index_name
                assert [v.field for v in reply.vectors] == ["visual"]
                hits = await store.search(
                    index_name,
                    VectorQuery(
                        vector_field="visual",
                        vector=list(reply.vectors[0].values),
                        top_k=2,
                        filter=VectorFilter(dataset_version_id=catalogue.version_id),
                    ),
                )
                assert hits[0].file_id == file_ids[n]
                assert hits[0].score > 0.999
            # The zero-shot tagger asks for the field it shares with text queries.
            semantic = await stub.EmbedImage(
                embedding_pb2.EmbedImageRequest(
                    dataset_id=catalogue.dataset_id, image_bytes=images[0], vector_fields=["semantic"]
                ),
                timeout=30,
            )
            assert [v.field for v in semantic.vectors] == ["semantic"]
            text = await stub.EmbedText(
                embedding_pb2.EmbedTextRequest(dataset_id=catalogue.dataset_id, text="a cat"), timeout=30
            )
            assert len(semantic.vectors[0].values) == len(text.vectors[0].values)
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.EmbedImage(
                    embedding_pb2.EmbedImageRequest(
                        dataset_id=catalogue.dataset_id, image_bytes=images[0], vector_fields=["colour"]
                    ),
                    timeout=30,
                )
            assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await store.close()

        # INCREMENTAL: everything current is skipped; the broken file fails again.
        again = await stub.StartIndexJob(
            embedding_pb2.StartIndexJobRequest(
                dataset_version_id=catalogue.version_id, mode=common_pb2.JOB_MODE_INCREMENTAL
            ),
            timeout=30,
        )
        job = await _wait_for_job(stub, again.job.job.id, helpers)
        assert (job.counts.embedded, job.counts.skipped, job.counts.failed) == (0, 4, 1)

        # A new index, not activated: the active one stays first.
        alternative = await stub.StartIndexJob(
            embedding_pb2.StartIndexJobRequest(
                dataset_version_id=catalogue.version_id,
                index_name="alt_index",
                mode=common_pb2.JOB_MODE_FULL,
                vector_store_connection="milvus",
            ),
            timeout=30,
        )
        try:
            job = await _wait_for_job(stub, alternative.job.job.id, helpers)
            assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED
            assert job.counts.embedded == 4
            listed = await stub.ListIndexes(
                embedding_pb2.ListIndexesRequest(dataset_id=catalogue.dataset_id), timeout=10
            )
            assert [(i.name, i.active, i.vector_store_connection, i.row_count) for i in listed.indexes] == [
                (index_name, True, "pgvector", 4),
                ("alt_index", False, "milvus", 4),
            ]
        finally:
            milvus = await create_vector_store(VectorStoreSettings(kind="milvus"))
            await milvus.delete("alt_index", file_ids)
            await milvus.close()
            from pymilvus import MilvusClient  # noqa: PLC0415

            client = MilvusClient(uri=VectorStoreSettings().milvus.uri)
            client.drop_collection("vf_index_alt_index")
            client.close()

        # Precise statuses for bad requests.
        assert (
            await _status(stub.EmbedText(embedding_pb2.EmbedTextRequest(text="   "), timeout=10))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            await _status(stub.EmbedText(embedding_pb2.EmbedTextRequest(text="x" * 2049), timeout=10))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            await _status(
                stub.EmbedImage(embedding_pb2.EmbedImageRequest(image_bytes=b"not an image"), timeout=10)
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            await _status(
                stub.EmbedImage(embedding_pb2.EmbedImageRequest(image_uri="http://x/y"), timeout=10)
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            await _status(
                stub.EmbedImage(
                    embedding_pb2.EmbedImageRequest(image_uri=f"s3://{catalogue.bucket}/missing.png"),
                    timeout=10,
                )
            )
            == grpc.StatusCode.NOT_FOUND
        )
        assert (
            await _status(
                stub.EmbedText(embedding_pb2.EmbedTextRequest(dataset_id="nope", text="cat"), timeout=10)
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            await _status(
                stub.EmbedText(
                    embedding_pb2.EmbedTextRequest(index_name="no_such_index", text="cat"), timeout=10
                )
            )
            == grpc.StatusCode.NOT_FOUND
        )
        assert (
            await _status(
                stub.GetIndex(embedding_pb2.GetIndexRequest(index_name="no_such_index"), timeout=10)
            )
            == grpc.StatusCode.NOT_FOUND
        )
        assert (
            await _status(
                stub.StartIndexJob(
                    embedding_pb2.StartIndexJobRequest(dataset_version_id=catalogue.version_id), timeout=10
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            await _status(
                stub.StartIndexJob(
                    embedding_pb2.StartIndexJobRequest(
                        dataset_version_id=catalogue.version_id,
                        mode=common_pb2.JOB_MODE_FULL,
                        max_concurrency=999,
                    ),
                    timeout=10,
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            await _status(
                stub.StartIndexJob(
                    embedding_pb2.StartIndexJobRequest(
                        dataset_version_id=catalogue.dataset_id, mode=common_pb2.JOB_MODE_FULL
                    ),
                    timeout=10,
                )
            )
            == grpc.StatusCode.NOT_FOUND
        )
        assert (
            await _status(
                stub.ResumeIndexJob(
                    embedding_pb2.ResumeIndexJobRequest(job_id=started.job.job.id), timeout=10
                )
            )
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        assert (
            await _status(
                stub.GetIndexJob(embedding_pb2.GetIndexJobRequest(job_id=catalogue.dataset_id), timeout=10)
            )
            == grpc.StatusCode.NOT_FOUND
        )
        finished = await stub.CancelIndexJob(
            embedding_pb2.CancelIndexJobRequest(job_id=started.job.job.id), timeout=10
        )
        assert finished.job.job.state == common_pb2.JOB_STATE_SUCCEEDED  # a finished job stays as it is
