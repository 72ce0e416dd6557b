"""A CLIP ViT saved in open_clip's directory layout, run in plain torch (open_clip is not installed).

The layout is what open_clip's ``save_for_hf`` / ``push_to_hf_hub`` writes:

* ``open_clip_config.json``: ``{"model_cfg": {"embed_dim", "quick_gelu",
  "vision_cfg": {...}, "text_cfg": {...}}, "preprocess_cfg": {"mean", "std", ...}}``;
* ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``: the
  ``CLIP`` module's state dict under open_clip's own names (``visual.conv1.weight``,
  ``visual.transformer.resblocks.0.attn.in_proj_weight``, ``token_embedding.weight``,
  ``text_projection``, ``logit_scale`` ...);
* a Hugging Face tokenizer (``tokenizer.json``): ``save_for_hf`` always saves
  one beside the weights.

The network below mirrors open_clip's ``CLIP`` with a ``VisionTransformer``
image tower and its built-in text ``Transformer`` under the same parameter
names, so the state dict loads strictly. Options that change the computation
and are not implemented here (timm or Hugging Face towers, ModifiedResNet,
attentional pooling, a CLS-token text tower, ``custom_text``) are refused
with the option's name, never ignored. The default ViT, ``quick_gelu``,
``ls_init_value``, ``norm_kwargs.eps`` and ``proj_bias`` are checked against
transformers' CLIP on the same weights (tests); ``no_ln_pre``, ``pool_type``
``avg``, ``final_ln_after_pool``, text ``pool_type`` ``first`` / ``last`` and
``no_causal_mask`` (CLIPA-style models) follow open_clip's forward but have
no independent implementation here to be checked against.

Tokenizer: open_clip's default ``SimpleTokenizer`` reads a BPE vocabulary that
ships inside the open_clip package, so a directory without tokenizer files
cannot be tokenized faithfully here; ``load`` then fails naming the missing
``tokenizer.json``. With one, texts are encoded like open_clip does it:
``<|startoftext|>`` + BPE tokens + ``<|endoftext|>``, truncated to the context
length with the end token kept last, padded with 0, pooled at the argmax
token (the end token has the highest id in CLIP's vocabulary).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from viewfinder_embedder.domain.model import ModelError

CONFIG_NAME = "open_clip_config.json"
# open_clip's names for the weights (``open_clip.constants``), safetensors first.
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TOKENIZER_NAME = "tokenizer.json"
START_TOKEN = "<|startoftext|>"  # noqa: S105 (a vocabulary token, not a secret)
END_TOKEN = "<|endoftext|>"  # noqa: S105

# Options that do not change inference here: training-only ones, the attentional pooler's
# size (attentional pooling itself is refused) and the tokenizer's name (the directory
# carries the tokenizer itself).
_IGNORED = {
    "patch_dropout",
    "output_tokens",
    "timm_model_pretrained",
    "timm_pool",
    "timm_proj",
    "timm_proj_bias",
    "timm_drop",
    "timm_drop_path",
    "hf_tokenizer_name",
    "tokenizer_kwargs",
    "tokenizer_mode",
    "attn_pooler_queries",
    "attn_pooler_heads",
}
_VISION_OPTIONS = {
    "layers",
    "width",
    "head_width",
    "mlp_ratio",
    "patch_size",
    "image_size",
    "ls_init_value",
    "no_ln_pre",
    "pos_embed_type",
    "pool_type",
    "final_ln_after_pool",
    "norm_kwargs",
    "attentional_pool",
    "timm_model_name",
}
_TEXT_OPTIONS = {
    "context_length",
    "vocab_size",
    "width",
    "heads",
    "layers",
    "mlp_ratio",
    "ls_init_value",
    "pad_id",
    "no_causal_mask",
    "pool_type",
    "proj_bias",
    "proj_type",
    "norm_kwargs",
    "embed_cls",
    "hf_model_name",
    "final_ln_after_pool",
}
_MODEL_OPTIONS = {
    "embed_dim",
    "quick_gelu",
    "vision_cfg",
    "text_cfg",
    "custom_text",
    "init_logit_bias",
    "cast_dtype",
}


@dataclass(frozen=True)
class VisionConfig:
    """open_clip's ``CLIPVisionCfg`` for a ViT tower (defaults as open_clip's)."""

    layers: int = 12
    width: int = 768
    head_width: int = 64
    mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: int = 224
    ls_init_value: float | None = None
    no_ln_pre: bool = False
    pool_type: str = "tok"
    final_ln_after_pool: bool = False
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class TextConfig:
    """open_clip's ``CLIPTextCfg`` for its built-in text transformer (defaults as open_clip's)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None
    pad_id: int = 0
    no_causal_mask: bool = False
    pool_type: str = "argmax"
    proj_bias: bool = False
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class OpenClipConfig:
    """What ``open_clip_config.json`` says about the network and its preprocessing."""

    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    quick_gelu: bool
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None


def _refuse_unsupported(where: str, cfg: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(cfg) - known - _IGNORED)
    if unknown:
        raise ModelError(
            f"{CONFIG_NAME}: {where} option(s) {', '.join(unknown)} are not supported by this loader"
        )


def _norm_eps(where: str, cfg: Mapping[str, Any]) -> float:
    norm_kwargs = cfg.get("norm_kwargs") or {}
    if set(norm_kwargs) - {"eps"}:
        raise ModelError(f"{CONFIG_NAME}: {where}.norm_kwargs supports only eps, got {sorted(norm_kwargs)}")
    return float(norm_kwargs.get("eps", 1e-5))


def _square(value: Any, what: str) -> int:
    """open_clip allows (height, width) pairs; the decoder produces squares."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise ModelError(f"{CONFIG_NAME}: only square {what} are supported, got {value}")
        value = value[0]
    return int(value)


def _vision_config(cfg: Mapping[str, Any]) -> VisionConfig:
    _refuse_unsupported("vision_cfg", cfg, _VISION_OPTIONS)
    if cfg.get("timm_model_name"):
        raise ModelError(f"{CONFIG_NAME}: a timm image tower ({cfg['timm_model_name']}) is not supported")
    if isinstance(cfg.get("layers"), list | tuple):
        raise ModelError(f"{CONFIG_NAME}: ModifiedResNet image towers (layers as a list) are not supported")
    if cfg.get("attentional_pool"):
        raise ModelError(f"{CONFIG_NAME}: attentional pooling (vision_cfg.attentional_pool) is not supported")
    pool_type = str(cfg.get("pool_type", "tok"))
    if pool_type not in ("tok", "avg"):
        raise ModelError(f"{CONFIG_NAME}: vision_cfg.pool_type {pool_type!r} gives no image embedding")
    if cfg.get("pos_embed_type", "learnable") not in ("learnable", "sin_cos_2d"):
        raise ModelError(f"{CONFIG_NAME}: vision_cfg.pos_embed_type {cfg['pos_embed_type']!r} is unknown")
    defaults = VisionConfig()
    return VisionConfig(
        layers=int(cfg.get("layers", defaults.layers)),
        width=int(cfg.get("width", defaults.width)),
        head_width=int(cfg.get("head_width", defaults.head_width)),
        mlp_ratio=float(cfg.get("mlp_ratio", defaults.mlp_ratio)),
        patch_size=_square(cfg.get("patch_size", defaults.patch_size), "patches"),
        image_size=_square(cfg.get("image_size", defaults.image_size), "images"),
        ls_init_value=cfg.get("ls_init_value"),
        no_ln_pre=bool(cfg.get("no_ln_pre", False)),
        pool_type=pool_type,
        final_ln_after_pool=bool(cfg.get("final_ln_after_pool", False)),
        norm_eps=_norm_eps("vision_cfg", cfg),
    )


def _text_config(cfg: Mapping[str, Any]) -> TextConfig:
    _refuse_unsupported("text_cfg", cfg, _TEXT_OPTIONS)
    if cfg.get("hf_model_name"):
        raise ModelError(
            f"{CONFIG_NAME}: a Hugging Face text tower ({cfg['hf_model_name']}) is not supported"
        )
    if cfg.get("embed_cls"):
        raise ModelError(
            f"{CONFIG_NAME}: a text tower with a CLS embedding (text_cfg.embed_cls) is not supported"
        )
    if cfg.get("final_ln_after_pool"):
        raise ModelError(f"{CONFIG_NAME}: text_cfg.final_ln_after_pool is not supported")
    if cfg.get("proj_type", "linear") != "linear":
        raise ModelError(f"{CONFIG_NAME}: text_cfg.proj_type {cfg['proj_type']!r} is not supported")
    pool_type = str(cfg.get("pool_type", "argmax"))
    if pool_type not in ("argmax", "first", "last"):
        raise ModelError(f"{CONFIG_NAME}: text_cfg.pool_type {pool_type!r} gives no text embedding")
    defaults = TextConfig()
    return TextConfig(
        context_length=int(cfg.get("context_length", defaults.context_length)),
        vocab_size=int(cfg.get("vocab_size", defaults.vocab_size)),
        width=int(cfg.get("width", defaults.width)),
        heads=int(cfg.get("heads", defaults.heads)),
        layers=int(cfg.get("layers", defaults.layers)),
        mlp_ratio=float(cfg.get("mlp_ratio", defaults.mlp_ratio)),
        ls_init_value=cfg.get("ls_init_value"),
        pad_id=int(cfg.get("pad_id", defaults.pad_id)),
        no_causal_mask=bool(cfg.get("no_causal_mask", False)),
        pool_type=pool_type,
        proj_bias=bool(cfg.get("proj_bias", False)),
        norm_eps=_norm_eps("text_cfg", cfg),
    )


def _triple(value: Any, what: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    values = [float(v) for v in (value if isinstance(value, list | tuple) else [value] * 3)]
    if len(values) != 3:
        raise ModelError(f"{CONFIG_NAME}: preprocess_cfg.{what} must have 3 values, got {value}")
    return values[0], values[1], values[2]


def read_config(path: Path) -> OpenClipConfig:
    """Parses ``open_clip_config.json``; ModelError for what this loader cannot run."""
    try:
        document = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read {path / CONFIG_NAME}: {err}") from err
    model_cfg = document.get("model_cfg") if isinstance(document, dict) else None
    if not isinstance(model_cfg, dict) or "embed_dim" not in model_cfg:
        raise ModelError(f"{path / CONFIG_NAME} has no model_cfg with an embed_dim")
    _refuse_unsupported("model_cfg", model_cfg, _MODEL_OPTIONS)
    if model_cfg.get("custom_text"):
        raise ModelError(f"{CONFIG_NAME}: custom_text models (CustomTextCLIP) are not supported")
    if model_cfg.get("init_logit_bias") is not None:
        raise ModelError(f"{CONFIG_NAME}: SigLIP models (init_logit_bias) are not supported")
    preprocess = document.get("preprocess_cfg") or {}
    return OpenClipConfig(
        embed_dim=int(model_cfg["embed_dim"]),
        vision=_vision_config(model_cfg.get("vision_cfg") or {}),
        text=_text_config(model_cfg.get("text_cfg") or {}),
        quick_gelu=bool(model_cfg.get("quick_gelu", False)),
        mean=_triple(preprocess.get("mean"), "mean"),
        std=_triple(preprocess.get("std"), "std"),
    )


# ── the network, under open_clip's parameter names ─────────────────────


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation (open_clip's ``quick_gelu: true``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x * sigmoid(1.702 x)."""
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """open_clip's ``LayerScale`` (``ls_1.gamma`` / ``ls_2.gamma``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scales each channel."""
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    """Pre-norm attention + MLP block (``ln_1``, ``attn``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``)."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, *, quick_gelu: bool, layer_scale: bool, eps: float
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1: nn.Module = LayerScale(width) if layer_scale else nn.Identity()
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )
        self.ls_2: nn.Module = LayerScale(width) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x + attention(ln_1 x), then + mlp(ln_2 x)."""
        normed = self.ln_1(x)
        attended = self.attn(normed, normed, normed, need_weights=False, attn_mask=attn_mask)[0]
        x = x + self.ls_1(attended)
        out: torch.Tensor = x + self.ls_2(self.mlp(self.ln_2(x)))
        return out


class Transformer(nn.Module):
    """open_clip's ``Transformer``: ``resblocks.<i>``."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        *,
        quick_gelu: bool,
        layer_scale: bool,
        eps: float,
    ) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            [
                ResidualAttentionBlock(
                    width, heads, mlp_ratio, quick_gelu=quick_gelu, layer_scale=layer_scale, eps=eps
                )
                for _ in range(layers)
            ]
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Batch-first tokens through every block."""
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    """open_clip's ``VisionTransformer`` (the ``visual`` tower of ``CLIP``)."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, *, quick_gelu: bool) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ModelError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.width % cfg.head_width:
            raise ModelError(f"vision width {cfg.width} is not a multiple of head_width {cfg.head_width}")
        self.cfg = cfg
        grid = cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, cfg.width))
        self.ln_pre: nn.Module = nn.Identity() if cfg.no_ln_pre else nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.transformer = Transformer(
            cfg.width,
            cfg.layers,
            cfg.width // cfg.head_width,
            cfg.mlp_ratio,
            quick_gelu=quick_gelu,
            layer_scale=cfg.ls_init_value is not None,
            eps=cfg.norm_eps,
        )
        self.ln_post = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.proj = nn.Parameter(torch.zeros(cfg.width, embed_dim))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:].mean(dim=1) if self.cfg.pool_type == "avg" else x[:, 0]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, H, W) pixels → (N, embed_dim) image features."""
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # N, grid², width
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        # open_clip normalises every token before pooling unless final_ln_after_pool.
        pooled = self.ln_post(self._pool(x)) if self.cfg.final_ln_after_pool else self._pool(self.ln_post(x))
        return pooled @ self.proj


class OpenClipNetwork(nn.Module):
    """open_clip's ``CLIP`` with a ViT image tower and its built-in text transformer."""

    def __init__(self, cfg: OpenClipConfig) -> None:
        super().__init__()
        text = cfg.text
        self.text_cfg = text
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim, quick_gelu=cfg.quick_gelu)
        self.transformer = Transformer(
            text.width,
            text.layers,
            text.heads,
            text.mlp_ratio,
            quick_gelu=cfg.quick_gelu,
            layer_scale=text.ls_init_value is not None,
            eps=text.norm_eps,
        )
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.zeros(text.context_length, text.width))
        self.ln_final = nn.LayerNorm(text.width, eps=text.norm_eps)
        self.text_projection: nn.Module | nn.Parameter = (
            nn.Linear(text.width, cfg.embed_dim)
            if text.proj_bias
            else nn.Parameter(torch.zeros(text.width, cfg.embed_dim))
        )
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        causal = torch.full((text.context_length, text.context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", None if text.no_causal_mask else causal, persistent=False)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features (not normalised)."""
        features: torch.Tensor = self.visual(pixels)
        return features

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, context_length) token ids → text features (not normalised)."""
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        mask = self.attn_mask[:length, :length] if isinstance(self.attn_mask, torch.Tensor) else None
        x = self.ln_final(self.transformer(x, mask))
        pool_type = self.text_cfg.pool_type
        if pool_type == "argmax":  # the end token has the highest id of each sequence
            pooled = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
        elif pool_type == "first":
            pooled = x[:, 0]
        else:
            pooled = x[:, -1]
        if isinstance(self.text_projection, nn.Linear):
            projected: torch.Tensor = self.text_projection(pooled)
            return projected
        assert isinstance(self.text_projection, torch.Tensor)
        features: torch.Tensor = pooled @ self.text_projection
        return features


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights file of the directory (safetensors preferred), as open_clip saved it."""
    for name in WEIGHT_NAMES:
        file = path / name
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file  # noqa: PLC0415

            state: Any = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a training checkpoint
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ModelError(f"{file} does not hold a state dict")
        return {key.removeprefix("module."): value for key, value in state.items()}
    raise ModelError(f"{path} has {CONFIG_NAME} but no weights ({' or '.join(WEIGHT_NAMES)})")


class OpenClipTokenizer:
    """open_clip's text encoding with the directory's Hugging Face BPE tokenizer."""

    def __init__(self, path: Path, *, context_length: int, pad_id: int) -> None:
        file = path / TOKENIZER_NAME
        if not file.is_file():
            raise ModelError(
                f"{path} has no {TOKENIZER_NAME}: open_clip's own BPE vocabulary ships inside the open_clip "
                "package, which is not installed here; save the tokenizer into the directory "
                "(open_clip's save_for_hf does, or tokenizer.save_pretrained of openai/clip-vit-base-patch32)"
            )
        from tokenizers import Tokenizer  # noqa: PLC0415

        self._tokenizer = Tokenizer.from_file(str(file))
        # A saved tokenizer may carry its own padding / truncation; the layout below is open_clip's.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        start, end = self._tokenizer.token_to_id(START_TOKEN), self._tokenizer.token_to_id(END_TOKEN)
        if start is None or end is None:
            raise ModelError(f"{file} lacks CLIP's special tokens {START_TOKEN} and {END_TOKEN}")
        self._start, self._end = start, end
        self._context_length = context_length
        self._pad_id = pad_id

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), context_length) token ids."""
        tokens = torch.full((len(texts), self._context_length), self._pad_id, dtype=torch.long)
        for row, encoding in enumerate(self._tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            ids = [self._start, *encoding.ids, self._end]
            if len(ids) > self._context_length:
                ids = [*ids[: self._context_length - 1], self._end]
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens


def load_network(path: Path, cfg: OpenClipConfig) -> OpenClipNetwork:
    """The network with the directory's weights, loaded strictly (ModelError naming what differs)."""
    network = OpenClipNetwork(cfg)
    state = load_state_dict(path)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"the weights in {path} do not match {CONFIG_NAME}: missing {missing[:5]}"
            f"{' …' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}"
        )
    wrong = [key for key, value in state.items() if tuple(value.shape) != tuple(expected[key].shape)]
    if wrong:
        key = wrong[0]
        raise ModelError(
            f"the weights in {path} do not match {CONFIG_NAME}: {key} has shape {tuple(state[key].shape)}, "
            f"the config gives {tuple(expected[key].shape)}"
        )
    network.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    network.eval()
    return network
