"""Embedding search queries (a text or an image) with the model of a dataset's index.

Search never loads a model: it asks EmbedService for the query's vectors in
the fields that answer its kind. The model is the one of the named index, or
of the dataset's active index; a dataset without an index yet (and a request
without a dataset, e.g. the tagger's zero-shot prompts) gets the model a new
index would be built with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from viewfinder_common.errors import InvalidArgument, NotFound
from viewfinder_embedder.domain.decode import DecodedImage
from viewfinder_embedder.domain.indexes import IndexDirectory, canonical_dataset_id
from viewfinder_embedder.domain.model import EmbeddingModel, ModelField, ModelIdentity, QueryKind, fields_for
from viewfinder_embedder.domain.ports import ImageDecoder, ObjectReader, ObjectUnavailable


@dataclass(frozen=True)
class QueryVectors:
    """A query's vectors, one per field that answers its kind."""

    vectors: dict[str, list[float]]
    model: ModelIdentity
    index_name: str


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key), or INVALID_ARGUMENT."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        if bucket and key:
            return bucket, key
    raise InvalidArgument(f"image_uri {uri!r} is not of the form s3://bucket/key")


class QueryEmbedder:
    """EmbedText / EmbedImage logic."""

    def __init__(
        self,
        directory: IndexDirectory,
        reader: ObjectReader,
        decoder: ImageDecoder,
        *,
        max_text_chars: int,
    ) -> None:
        self._directory = directory
        self._reader = reader
        self._decoder = decoder
        self._max_text_chars = max_text_chars

    async def _model(
        self, dataset_id: str, index_name: str, kind: QueryKind
    ) -> tuple[EmbeddingModel, list[ModelField], str]:
        index = await self._directory.find(dataset_id, index_name)
        if index is not None:
            model = await self._directory.model_for(index)
            return model, index.query_fields(kind), index.name
        if dataset_id:
            model_connection, _ = await self._directory.connections_for(canonical_dataset_id(dataset_id))
        else:
            model_connection = self._directory.default_model_connection
        model = await self._directory.model_for_connection(model_connection)
        return model, fields_for(model.fields, kind), ""

    async def embed_text(self, dataset_id: str, index_name: str, text: str) -> QueryVectors:
        """The text's vectors in the fields that answer text queries."""
        if not text.strip():
            raise InvalidArgument("text is empty")
        if len(text) > self._max_text_chars:
            raise InvalidArgument(
                f"text has {len(text)} characters; at most {self._max_text_chars} are allowed"
            )
        model, fields, used_index = await self._model(dataset_id, index_name, QueryKind.TEXT)
        if not fields:
            raise InvalidArgument(f"model {model.identity.id} has no vector field that answers text queries")
        vectors = await model.embed_texts([text])
        return QueryVectors(
            {f.name: [float(v) for v in vectors[f.name][0]] for f in fields}, model.identity, used_index
        )

    async def embed_image(
        self, dataset_id: str, index_name: str, *, data: bytes, uri: str, vector_fields: Sequence[str] = ()
    ) -> QueryVectors:
        """The image's vectors (bytes or an s3:// URI).

        In the fields that answer image queries, or in ``vector_fields`` when
        given (the zero-shot tagger wants the field shared with text queries).
        """
        if uri:
            bucket, key = parse_s3_uri(uri)
            try:
                data = await self._reader.read(bucket, key)
            except ObjectUnavailable as exc:
                raise NotFound(str(exc)) from None
        if not data:
            raise InvalidArgument("no image: set image_bytes or image_uri")
        model, fields, used_index = await self._model(dataset_id, index_name, QueryKind.IMAGE)
        if vector_fields:
            by_name = {f.name: f for f in model.fields}
            unknown = sorted(set(vector_fields) - set(by_name))
            if unknown:
                raise InvalidArgument(
                    f"model {model.identity.id} has no vector field(s) {unknown}; it has {sorted(by_name)}"
                )
            fields = [by_name[name] for name in dict.fromkeys(vector_fields)]
        if not fields:
            raise InvalidArgument(f"model {model.identity.id} has no vector field that answers image queries")
        decoded = await self._decoder.decode(data, model.image_size)
        if not isinstance(decoded, DecodedImage):
            raise InvalidArgument(f"cannot decode the image: {decoded.reason}")
        vectors = await model.embed_images([decoded.pixels])
        return QueryVectors(
            {f.name: [float(v) for v in vectors[f.name][0]] for f in fields}, model.identity, used_index
        )
