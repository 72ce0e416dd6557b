"""Fixtures of the embedder's tests: the model (loaded once), catalogue rows, a bucket, a running service.

Service tests run against the local stack's real servers (tansu, PostgreSQL +
pgvector, moto S3, Milvus Lite). The offline model is heavy for 2 cores, so it
is loaded once per session and handed to every service run.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageDraw

from viewfinder.v1 import embedding_pb2_grpc, events_pb2
from viewfinder_common.events import encode_event, event_headers
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import DatabaseSettings, KafkaSettings, S3Settings
from viewfinder_common.testing.kafka import create_topics, free_port, read_topic
from viewfinder_common.testing.polling import eventually
from viewfinder_common.vectorstore.factory import VectorStoreSettings
from viewfinder_embedder.adapters.offline_model import OfflineEmbeddingModel
from viewfinder_embedder.config import EmbedderSettings, default_model_cache_dir
from viewfinder_embedder.main import serve

STORES = ["pgvector", "milvus"]


@pytest.fixture(scope="session")
def offline_model() -> OfflineEmbeddingModel:
    """The offline model, loaded (and on a fresh machine exported to ONNX) once per session."""
    return OfflineEmbeddingModel.load(default_model_cache_dir())


def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (96, 96)) -> bytes:
    """A distinct synthetic picture per seed: coloured shapes on a background, optionally transparent."""
    rng = np.random.default_rng(seed)
    mode = "RGBA" if fmt == "PNG" else "RGB"
    background = (*[int(v) for v in rng.integers(0, 256, 3)], 0 if seed % 2 else 255)
    image = Image.new(mode, size, background[: len(mode)])
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, size[0] // 2, 2))
        x1, y1 = x0 + int(rng.integers(10, size[0] // 2)), y0 + int(rng.integers(10, size[1] // 2))
        colour = (*[int(v) for v in rng.integers(0, 256, 3)], 255)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour[: len(mode)])
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


# A PNG signature and header followed by garbage: passes a header sniff, fails decoding.
POISON = image_bytes(999)[:60] + b"\x00garbage" * 50


@dataclass
class Catalogue:
    """Rows of one dataset version in the test database."""

    url: str
    dataset_id: str
    version_id: str
    bucket: str

    async def add_files(self, keys_etags: list[tuple[str, str]]) -> list[str]:
        """Inserts ACTIVE files; returns their ids."""
        conn = await asyncpg.connect(self.url)
        try:
            ids = []
            for key, etag in keys_etags:
                file_id = await conn.fetchval(
                    "INSERT INTO files (dataset_id, version_id, bucket, key, uri, size, etag, status) "
                    "VALUES ($1, $2, $3, $4, $5, 100, $6, 'active') RETURNING id::text",
                    uuid.UUID(self.dataset_id),
                    uuid.UUID(self.version_id),
                    self.bucket,
                    key,
                    f"s3://{self.bucket}/{key}",
                    etag,
                )
                ids.append(file_id)
            return ids
        finally:
            await conn.close()

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Runs a query on the test database."""
        conn = await asyncpg.connect(self.url)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows
        finally:
            await conn.close()


@pytest.fixture
async def catalogue(catalogue_db_url: str, unique_name: str) -> Catalogue:
    """A dataset with one version in a fresh database."""
    conn = await asyncpg.connect(catalogue_db_url)
    try:
        dataset_id = await conn.fetchval(
            "INSERT INTO datasets (name, bucket) VALUES ($1, $2) RETURNING id::text", unique_name, unique_name
        )
        version_id = await conn.fetchval(
            "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id::text",
            uuid.UUID(dataset_id),
        )
    finally:
        await conn.close()
    return Catalogue(catalogue_db_url, dataset_id, version_id, unique_name)


@pytest.fixture
async def bucket(catalogue: Catalogue) -> AsyncIterator[Callable[[str, bytes], Any]]:
    """Creates the dataset's bucket in moto; yields ``put(key, data) -> etag``."""
    async with s3_client(S3Settings()) as s3:
        await s3.create_bucket(Bucket=catalogue.bucket)

        async def put(key: str, data: bytes) -> str:
            reply = await s3.put_object(Bucket=catalogue.bucket, Key=key, Body=data)
            return str(reply["ETag"]).strip('"')

        yield put


def discovered(
    catalogue: Catalogue, file_id: str, key: str, etag: str, change: int = events_pb2.CHANGE_TYPE_UPSERT
) -> events_pb2.FileDiscovered:
    """A FileDiscovered event of a file of the catalogue's version."""
    return events_pb2.FileDiscovered(
        event_id=str(uuid.uuid4()),
        dataset_id=catalogue.dataset_id,
        dataset_version_id=catalogue.version_id,
        file_id=file_id,
        uri=f"s3://{catalogue.bucket}/{key}",
        bucket=catalogue.bucket,
        key=key,
        etag=etag if change == events_pb2.CHANGE_TYPE_UPSERT else "",
        size=100 if change == events_pb2.CHANGE_TYPE_UPSERT else 0,
        change_type=change,  # type: ignore[arg-type]
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )


@dataclass
class RunningEmbedder:
    """A running embedder service and what the test needs to talk to it."""

    settings: EmbedderSettings
    stub: embedding_pb2_grpc.EmbedServiceStub
    discovered_topic: str
    embedded_topic: str
    dlq_topic: str

    async def publish(self, events: list[events_pb2.FileDiscovered]) -> None:
        """Publishes FileDiscovered events keyed by file id, as ingest does."""
        from aiokafka import AIOKafkaProducer  # noqa: PLC0415

        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for event in events:
                await producer.send_and_wait(
                    self.discovered_topic,
                    encode_event(event),
                    key=event.file_id.encode(),
                    headers=[(k, v.encode()) for k, v in event_headers(event).items()],
                )
        finally:
            await producer.stop()


EmbedderStarter = Callable[..., AbstractAsyncContextManager[RunningEmbedder]]


@pytest.fixture
def start_embedder(
    catalogue: Catalogue, unique_name: str, offline_model: OfflineEmbeddingModel, isolated_logging: None
) -> EmbedderStarter:
    """``async with start_embedder(store="pgvector") as embedder:`` runs main.serve until the block ends."""
    created: list[str] = []

    @asynccontextmanager
    async def start(store: str = "pgvector", **overrides: Any) -> AsyncIterator[RunningEmbedder]:
        discovered_topic = f"{unique_name}.file-discovered"
        embedded_topic = f"{unique_name}.file-embedded"
        dlq_topic = f"{discovered_topic}.dlq.embedder"
        if not created:
            await create_topics({discovered_topic: 2, embedded_topic: 1, dlq_topic: 1})
            created.append(discovered_topic)
        values: dict[str, Any] = {
            "grpc_port": free_port(),
            "db": DatabaseSettings(url=catalogue.url),
            "kafka": KafkaSettings(
                topic_file_discovered=discovered_topic, topic_file_embedded=embedded_topic
            ),
            "vector_store": VectorStoreSettings(kind=store),
            "consumer_group": f"{unique_name}-embedder",
            "decode_workers": 1,
            "fetch_concurrency": 8,
            "retry_backoff_s": 0.5,
            "job_poll_interval_s": 0.3,
            "shutdown_grace_s": 1.0,
            "log_json": False,
        }
        values.update(overrides)
        settings = EmbedderSettings.model_validate(values)
        stop = asyncio.Event()
        task = asyncio.create_task(serve(stop, settings, preloaded={"offline": offline_model}))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}")
        try:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 90
            while True:
                if task.done():
                    task.result()
                    raise AssertionError("the embedder stopped during startup")
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, "the embedder did not become healthy"
                await asyncio.sleep(0.1)
            yield RunningEmbedder(
                settings,
                embedding_pb2_grpc.EmbedServiceStub(channel),
                discovered_topic,
                embedded_topic,
                dlq_topic,
            )
        finally:
            stop.set()
            await channel.close()
            await asyncio.wait_for(task, 60)

    return start


# ── tiny, randomly initialised CLIP models in both directory layouts ──────
# (torch and transformers are imported inside: most tests need neither)

TINY_CLIP_WORDS = ["a", "photo", "of", "red", "blue", "green", "cat", "dog"]
# The open_clip-layout model's vocabulary: like CLIP's, the end token has the
# highest id (open_clip pools the text at the argmax token).
TINY_OPEN_CLIP_VOCAB_SIZE = 64
TINY_OPEN_CLIP_CONTEXT = 16
TINY_OPEN_CLIP_START = TINY_OPEN_CLIP_VOCAB_SIZE - 2
TINY_OPEN_CLIP_END = TINY_OPEN_CLIP_VOCAB_SIZE - 1
TINY_OPEN_CLIP_MEAN, TINY_OPEN_CLIP_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def save_tiny_clip(directory: Path) -> None:
    """A tiny CLIP in the transformers layout (``save_pretrained`` of model and tokenizer)."""
    import torch  # noqa: PLC0415
    from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: PLC0415
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast  # noqa: PLC0415

    torch.manual_seed(0)
    vocab = {"<unk>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for word in TINY_CLIP_WORDS:
        vocab[word] = len(vocab)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": 64,
            "max_position_embeddings": 16,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
        },
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(str(directory))
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=word_level,
        unk_token="<unk>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=16,
    ).save_pretrained(str(directory))


def tiny_open_clip_vocab() -> dict[str, int]:
    """Word → id of the open_clip-layout model's tokenizer."""
    vocab = {"<unk>": 0, "<|startoftext|>": TINY_OPEN_CLIP_START, "<|endoftext|>": TINY_OPEN_CLIP_END}
    for number, word in enumerate(TINY_CLIP_WORDS, start=1):
        vocab[word] = number
    return vocab


def tiny_reference_clip(quick_gelu: bool, layer_norm_eps: float = 1e-5) -> Any:
    """A tiny transformers ``CLIPModel`` shaped like the open_clip config below (mlp_ratio 4)."""
    import torch  # noqa: PLC0415
    from transformers import CLIPConfig, CLIPModel  # noqa: PLC0415

    torch.manual_seed(3)
    tower = {
        "hidden_size": 32,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "hidden_act": "quick_gelu" if quick_gelu else "gelu",
        "layer_norm_eps": layer_norm_eps,
    }
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": TINY_OPEN_CLIP_VOCAB_SIZE,
            "max_position_embeddings": TINY_OPEN_CLIP_CONTEXT,
            "bos_token_id": TINY_OPEN_CLIP_START,
            "eos_token_id": TINY_OPEN_CLIP_END,
            "pad_token_id": 0,
        },
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=24,
    )
    model = CLIPModel(config)
    with torch.no_grad():  # transformers initialises LayerNorms to identity; make them matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def open_clip_state_dict(model: Any) -> dict[str, Any]:
    """A transformers CLIP's weights under open_clip's ``CLIP`` parameter names."""
    import torch  # noqa: PLC0415

    hf = {key: value.detach().clone() for key, value in model.state_dict().items()}
    out = {
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": hf["visual_projection.weight"].T.contiguous(),
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "text_projection": hf["text_projection.weight"].T.contiguous(),
        "logit_scale": hf["logit_scale"],
    }
    for ours, theirs in [
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("ln_final", "text_model.final_layer_norm"),
    ]:
        for part in ("weight", "bias"):
            out[f"{ours}.{part}"] = hf[f"{theirs}.{part}"]
    for ours, theirs in [
        ("visual.transformer", "vision_model.encoder"),
        ("transformer", "text_model.encoder"),
    ]:
        for layer in range(2):
            block, hf_block = f"{ours}.resblocks.{layer}", f"{theirs}.layers.{layer}"
            for part in ("weight", "bias"):
                # open_clip keeps nn.MultiheadAttention's stacked q, k, v projection.
                out[f"{block}.attn.in_proj_{part}"] = torch.cat(
                    [hf[f"{hf_block}.self_attn.{p}_proj.{part}"] for p in "qkv"]
                )
                out[f"{block}.attn.out_proj.{part}"] = hf[f"{hf_block}.self_attn.out_proj.{part}"]
                out[f"{block}.ln_1.{part}"] = hf[f"{hf_block}.layer_norm1.{part}"]
                out[f"{block}.ln_2.{part}"] = hf[f"{hf_block}.layer_norm2.{part}"]
                out[f"{block}.mlp.c_fc.{part}"] = hf[f"{hf_block}.mlp.fc1.{part}"]
                out[f"{block}.mlp.c_proj.{part}"] = hf[f"{hf_block}.mlp.fc2.{part}"]
    return out


def open_clip_config(quick_gelu: bool, **vision_extra: Any) -> dict[str, Any]:
    """``open_clip_config.json`` of the tiny model (``vision_extra`` overrides vision_cfg)."""
    return {
        "model_cfg": {
            "embed_dim": 24,
            "quick_gelu": quick_gelu,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8}
            | vision_extra,
            "text_cfg": {
                "context_length": TINY_OPEN_CLIP_CONTEXT,
                "vocab_size": TINY_OPEN_CLIP_VOCAB_SIZE,
                "width": 32,
                "heads": 4,
                "layers": 2,
            },
        },
        "preprocess_cfg": {
            "mean": list(TINY_OPEN_CLIP_MEAN),
            "std": list(TINY_OPEN_CLIP_STD),
            "interpolation": "bicubic",
        },
    }


def save_tiny_open_clip(
    directory: Path, *, quick_gelu: bool = False, weights: str = "open_clip_model.safetensors"
) -> Any:
    """A tiny CLIP in the open_clip layout (what ``save_for_hf`` writes: config, weights,
    tokenizer); returns the transformers model holding the same weights."""
    import torch  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415
    from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: PLC0415

    reference = tiny_reference_clip(quick_gelu)
    state = open_clip_state_dict(reference)
    if weights.endswith(".safetensors"):
        save_file(state, str(directory / weights))
    else:
        torch.save(state, directory / weights)
    (directory / "open_clip_config.json").write_text(json.dumps(open_clip_config(quick_gelu)))
    tokenizer = Tokenizer(models.WordLevel(tiny_open_clip_vocab(), unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    return reference


@pytest.fixture
def helpers() -> Any:
    """Module-level helpers of this conftest (importlib mode cannot import conftest)."""

    class Helpers:
        image_bytes = staticmethod(image_bytes)
        discovered = staticmethod(discovered)
        read_topic = staticmethod(read_topic)
        eventually = staticmethod(eventually)
        poison = POISON
        save_tiny_clip = staticmethod(save_tiny_clip)
        save_tiny_open_clip = staticmethod(save_tiny_open_clip)
        open_clip_config = staticmethod(open_clip_config)
        tiny_reference_clip = staticmethod(tiny_reference_clip)
        open_clip_state_dict = staticmethod(open_clip_state_dict)
        tiny_open_clip_vocab = staticmethod(tiny_open_clip_vocab)
        tiny_open_clip: ClassVar[dict[str, Any]] = {
            "context": TINY_OPEN_CLIP_CONTEXT,
            "start": TINY_OPEN_CLIP_START,
            "end": TINY_OPEN_CLIP_END,
            "mean": TINY_OPEN_CLIP_MEAN,
            "std": TINY_OPEN_CLIP_STD,
        }

    return Helpers
