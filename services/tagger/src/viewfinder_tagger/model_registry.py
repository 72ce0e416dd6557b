"""The configured labeling model connections, built once per process and shared.

Sharing matters: every job and the automatic labeler that use one connection
share its HTTP connection pool and its adaptive concurrency limiter, so the
limiter sees every 429 the service sends us.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from viewfinder_common.errors import InvalidArgument
from viewfinder_tagger.adapters.openai_vlm import OpenAIChatModel
from viewfinder_tagger.adapters.zero_shot_tagger import ZeroShotTagger
from viewfinder_tagger.config import LabelingConnection, OpenAIConnection
from viewfinder_tagger.domain.jobs import Prices
from viewfinder_tagger.domain.models import LabelingModel

ModelFactory = Callable[[str, LabelingConnection], LabelingModel]


def build_model(name: str, connection: LabelingConnection) -> LabelingModel:
    """The adapter for one configured connection."""
    if isinstance(connection, OpenAIConnection):
        return OpenAIChatModel(name, connection)
    return ZeroShotTagger(name, connection)


class ModelRegistry:
    """Named labeling models, created on first use and closed together."""

    def __init__(
        self,
        connections: Mapping[str, LabelingConnection],
        *,
        default: str,
        factory: ModelFactory = build_model,
    ) -> None:
        self._connections = dict(connections)
        self._default = default
        self._factory = factory
        self._models: dict[str, LabelingModel] = {}

    @property
    def default_name(self) -> str:
        """The connection used when neither the job nor the dataset names one."""
        return self._default

    def resolve(self, *names: str) -> str:
        """The first non-empty name, else the default; INVALID_ARGUMENT if it is not configured."""
        name = next((n for n in names if n), self._default)
        if name not in self._connections:
            configured = ", ".join(sorted(self._connections)) or "none"
            raise InvalidArgument(f"unknown model connection {name!r}; configured: {configured}")
        return name

    def get(self, name: str) -> LabelingModel:
        """The model of a configured connection (INVALID_ARGUMENT if unknown)."""
        name = self.resolve(name)
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = self._factory(name, self._connections[name])
        return model

    def prices(self, name: str) -> Prices:
        """The connection's token prices (zero and no currency for models without prices)."""
        connection = self._connections.get(name)
        if isinstance(connection, OpenAIConnection):
            return Prices(
                connection.price_prompt_per_million,
                connection.price_completion_per_million,
                connection.currency,
            )
        return Prices()

    async def close(self) -> None:
        """Closes every model created so far."""
        models, self._models = list(self._models.values()), {}
        for model in models:
            await model.close()
