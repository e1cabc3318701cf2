"""GPT-2, written from scratch in the style of *Build a Large Language Model (From Scratch)*, ch. 4.

Shapes in comments: B = batch, T = tokens, D = embedding dimension, H = heads, Dh = D / H,
V = vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .config import validate_config


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear``; inside ``kernels.streaming()`` one token's fp32 product on the CPU streams
    its weight through OpenBLAS, twice as fast as MKL's kernel at batch 1."""
    if kernels.takes(x, weight):
        return kernels.matvec(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear``, through ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def stacked_rows(parts: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The parts, each (R, ...), as one (len(parts) * R, ...) view of the memory they share,
    when each begins where the one before ends (splits of one packed tensor); else None."""
    first = parts[0]
    storage = first.untyped_storage().data_ptr()
    step = first.shape[0] * first.stride(0) * first.element_size()
    for index, part in enumerate(parts):
        if (part.shape != first.shape or part.stride() != first.stride()
                or part.dtype != first.dtype or part.device != first.device
                or part.untyped_storage().data_ptr() != storage
                or part.data_ptr() != first.data_ptr() + index * step):
            return None
    return first.as_strided((len(parts) * first.shape[0], *first.shape[1:]), first.stride())


class LayerNorm(nn.Module):
    """Normalises each token's features to zero mean and unit variance, then scales and shifts."""

    def __init__(self, embedding_dimension: int, epsilon: float, bias: bool = True):
        super().__init__()
        self.epsilon = epsilon
        self.scale = nn.Parameter(torch.ones(embedding_dimension))
        self.shift = nn.Parameter(torch.zeros(embedding_dimension)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.epsilon)


class MultiHeadAttention(nn.Module):
    """Causal self-attention: each token attends to itself and the tokens before it, in H heads.

    When the query, key and value weights are adjacent views of one packed tensor (the Hub's
    ``c_attn``, or as the loader places them) inference runs them as one product."""

    PROJECTIONS = ("query_projection", "key_projection", "value_projection")

    def __init__(self, embedding_dimension: int, number_of_heads: int, dropout_rate: float,
                 qkv_bias: bool, bias: bool = True):
        super().__init__()
        self.number_of_heads = number_of_heads
        self.head_dimension = embedding_dimension // number_of_heads
        self.dropout_rate = dropout_rate
        self.query_projection = Linear(embedding_dimension, embedding_dimension, bias=qkv_bias)
        self.key_projection = Linear(embedding_dimension, embedding_dimension, bias=qkv_bias)
        self.value_projection = Linear(embedding_dimension, embedding_dimension, bias=qkv_bias)
        self.output_projection = Linear(embedding_dimension, embedding_dimension, bias=bias)
        self._packed: tuple = ((), [], None)  # the tensors, their addresses, the packed pair

    def packed_projection(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The three projections as one (3D, D) weight and (3D,) bias, or None where their
        tensors are not adjacent, autograd needs them apart, a projection is not a plain
        ``Linear`` (replaced, say by an adapter, or hooked), or ``torch.compile`` traces the
        model (it cannot follow the address check). Remade when a tensor changes."""
        layers = [getattr(self, name) for name in self.PROJECTIONS]
        if any(type(layer) is not Linear or layer._forward_hooks or layer._forward_pre_hooks
               for layer in layers):
            return None
        tensors = [t for layer in layers for t in (layer.weight, layer.bias) if t is not None]
        if torch.compiler.is_compiling() or (
                torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
            return None
        made_from, addresses, packed = self._packed
        now = [t.data_ptr() for t in tensors]  # a list of another length: a bias came or went
        if addresses != now or any(a is not b for a, b in zip(made_from, tensors)):
            weight = stacked_rows(tuple(layer.weight for layer in layers))
            has_bias = layers[0].bias is not None
            bias = stacked_rows(tuple(layer.bias for layer in layers)) if has_bias else None
            packed = None if weight is None or (has_bias and bias is None) else (weight, bias)
            self._packed = (tensors, now, packed)
        return packed

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.number_of_heads, self.head_dimension).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, 1, T, S) says which of the S keys each query sees; None means causal."""
        batch, tokens, width = x.shape  # (B, T, D)
        packed = self.packed_projection()
        if packed is not None:  # (B, T, 3D) -> 3 x (B, H, T, Dh)
            queries, keys, values = linear(x, *packed).view(
                batch, tokens, 3, self.number_of_heads, self.head_dimension).permute(2, 0, 3, 1, 4)
        else:
            queries, keys, values = (self.split_heads(getattr(self, name)(x))
                                     for name in self.PROJECTIONS)  # 3 x (B, H, T, Dh)
        if cache is not None:  # append to the preallocated cache, attend to all of it
            keys, values = cache.store(layer, keys, values)  # (B, H, S, Dh), S = cached + T
        context = F.scaled_dot_product_attention(
            queries.to(keys.dtype), keys, values, attn_mask=mask,
            is_causal=mask is None and tokens > 1,
            dropout_p=self.dropout_rate if self.training else 0.0,
        ).to(x.dtype)  # (B, H, T, Dh); a CPU cache keeps half-precision models' keys in fp32
        context = context.transpose(1, 2).reshape(batch, tokens, width)  # (B, T, D)
        return self.output_projection(context)  # (B, T, D)


class FeedForward(nn.Module):
    """Two linear layers around a GELU (GPT-2's tanh approximation, or the exact erf one); the
    hidden layer is 4x as wide."""

    def __init__(self, embedding_dimension: int, gelu_approximation: str = "tanh",
                 bias: bool = True):
        super().__init__()
        self.expansion = Linear(embedding_dimension, 4 * embedding_dimension, bias=bias)
        self.activation = nn.GELU(approximate=gelu_approximation)
        self.contraction = Linear(4 * embedding_dimension, embedding_dimension, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.contraction(self.activation(self.expansion(x)))  # (B, T, 4D) inside


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + feed_forward(norm(x)), with dropout."""

    def __init__(self, config: dict):
        super().__init__()
        width, epsilon, bias = (config["embedding_dimension"], config["layer_norm_epsilon"],
                                config["bias"])
        self.attention_norm = LayerNorm(width, epsilon, bias)
        self.attention = MultiHeadAttention(
            width, config["number_of_heads"], config["dropout_rate"], config["qkv_bias"], bias
        )
        self.feed_forward_norm = LayerNorm(width, epsilon, bias)
        self.feed_forward = FeedForward(width, config["gelu_approximation"], bias)
        self.residual_dropout = nn.Dropout(config["dropout_rate"])

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        attended = self.attention(self.attention_norm(x), cache, layer, mask)
        x = x + self.residual_dropout(attended)  # (B, T, D)
        return x + self.residual_dropout(self.feed_forward(self.feed_forward_norm(x)))  # (B, T, D)


class GPTModel(nn.Module):
    """Token ids (B, T) in, next-token logits (B, T, V) out (V: padded_vocab_size).

    ``config`` is a dict like ``GPT_CONFIG_124M``; the book's key names (``emb_dim``...) work too.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = validate_config(config)
        config = self.config
        width, rows = config["embedding_dimension"], config["padded_vocab_size"]
        self.token_embedding_table = nn.Embedding(rows, width)
        self.position_embedding_table = nn.Embedding(config["context_length"], width)
        self.dropout_embedding = nn.Dropout(config["dropout_rate"])
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(config) for _ in range(config["number_of_layers"])
        )
        self.layer_norm = LayerNorm(width, config["layer_norm_epsilon"], config["bias"])
        self.output_head = Linear(width, rows, bias=False)
        self.tie_output_head()

    def tie_output_head(self) -> None:
        """Share the token embedding table with the output head when the config asks for it."""
        if self.config["tie_output_head"]:
            self.output_head.weight = self.token_embedding_table.weight

    def forward(self, token_ids: torch.Tensor, *, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, last_only: bool = False
                ) -> torch.Tensor:
        """Logits (B, T, V), or (B, 1, V) for the last position only.

        ``cache`` holds the keys and values of earlier tokens and receives these ones.
        ``attention_mask`` (B, cached + T), 1 for tokens and 0 for padding, lets prompts of
        different lengths share a batch (padded on the left).
        """
        tokens = token_ids.shape[1]  # token_ids: (B, T)
        start = cache.length if cache is not None else 0
        if start + tokens > self.config["context_length"]:
            raise ValueError(f"{start + tokens} tokens exceed the context length of "
                             f"{self.config['context_length']}")
        if isinstance(cache, StaticKVCache) and tokens == 1:  # shapes fixed: see StaticKVCache
            positions, mask = cache.position.view(1), cache.visible_keys()  # (1,), (1,1,1,S)
        elif attention_mask is not None:
            real = attention_mask.bool()  # (B, S)
            positions = (real.long().cumsum(-1) - 1).clamp(min=0)[:, start:]  # (B, T)
            mask = _attention_mask(real, start, tokens)
        else:
            positions = torch.arange(start, start + tokens, device=token_ids.device)  # (T,)
            mask = (_attention_mask(None, start, tokens, device=token_ids.device)
                    if start and tokens > 1 else None)
        x = self.token_embedding_table(token_ids) + self.position_embedding_table(positions)
        x = self.dropout_embedding(x)  # (B, T, D)
        for layer, block in enumerate(self.transformer_blocks):
            x = block(x, cache, layer, mask)  # (B, T, D)
        if cache is not None:
            cache.advance(tokens)
        if last_only:
            x = x[:, -1:]  # (B, 1, D)
        return self.output_head(self.layer_norm(x))  # (B, T, V)


def _attention_mask(real: torch.Tensor | None, start: int, tokens: int,
                    device: torch.device | None = None) -> torch.Tensor:
    """(B or 1, 1, T, S) booleans: query t (at position start + t) sees key s <= start + t that
    is not padding. Padding queries see the keys before them, so no row is empty."""
    keys = start + tokens
    device = real.device if real is not None else device
    causal = torch.ones(tokens, keys, dtype=torch.bool, device=device).tril(start)  # (T, S)
    if real is None:
        return causal[None, None]
    is_token = real[:, :keys]  # (B, S)
    query_is_token = is_token[:, start:]  # (B, T)
    allowed = is_token[:, None, :] | ~query_is_token[:, :, None]  # (B, T, S)
    return (causal[None] & allowed)[:, None]


class KVCache:
    """Keys and values of every block, preallocated for ``capacity`` tokens so that a decoding
    step writes in place instead of concatenating: two tensors (L, B, H, capacity, Dh).

    On the CPU a half-precision model's cache is fp32: for a decoding step the CPU's fp32
    attention kernel takes 17 us per block, its fp16 one 108 us and bf16 72 us (measured,
    docs/benchmarks.md)."""

    def __init__(self, model: GPTModel, batch_size: int, capacity: int | None = None):
        config = model.config
        capacity = capacity or config["context_length"]
        heads = config["number_of_heads"]
        shape = (config["number_of_layers"], batch_size, heads, capacity,
                 config["embedding_dimension"] // heads)
        weight = model.token_embedding_table.weight
        dtype = torch.float32 if weight.device.type == "cpu" else weight.dtype
        self.keys = torch.empty(shape, dtype=dtype, device=weight.device)
        self.values = torch.empty_like(self.keys)
        self.by_layer = list(zip(self.keys.unbind(0), self.values.unbind(0), strict=True))
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, H, T, Dh) keys and values after the cached ones; return all."""
        start, tokens = self.length, keys.shape[2]
        if start + tokens > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} tokens; {start + tokens} were given")
        layer_keys, layer_values = self.by_layer[layer]  # (B, H, capacity, Dh) each
        layer_keys.narrow(2, start, tokens).copy_(keys)  # narrow: one op, where indexing is four
        layer_values.narrow(2, start, tokens).copy_(values)
        return layer_keys.narrow(2, 0, start + tokens), layer_values.narrow(2, 0, start + tokens)

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` more as cached (the model calls it after every block stored them)."""
        self.length += tokens


class StaticKVCache(KVCache):
    """A cache whose one-token steps keep every shape and address fixed, so that a step can be
    captured once as a CUDA graph and replayed for each token: the position is a tensor, a
    step writes its keys at that position, and attention runs over the whole capacity with the
    keys not yet written masked out. A prompt of several tokens is stored as in ``KVCache``;
    ``position`` must then be set to ``length`` before the next step."""

    def __init__(self, model: GPTModel, batch_size: int, capacity: int | None = None):
        super().__init__(model, batch_size, capacity)
        device = self.keys.device
        self.position = torch.zeros((), dtype=torch.long, device=device)  # where a step writes
        self.key_index = torch.arange(self.capacity, device=device)  # (S,)

    def visible_keys(self) -> torch.Tensor:
        """(1, 1, 1, S) booleans: the keys up to and including this step's position."""
        return (self.key_index <= self.position)[None, None, None]

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        if keys.shape[2] > 1:  # a prompt: as in KVCache
            return super().store(layer, keys, values)
        layer_keys, layer_values = self.by_layer[layer]
        layer_keys.index_copy_(2, self.position.view(1), keys.to(layer_keys.dtype))
        layer_values.index_copy_(2, self.position.view(1), values.to(layer_values.dtype))
        return layer_keys, layer_values  # (B, H, S, Dh): masked by visible_keys

    def advance(self, tokens: int) -> None:
        """A prompt moves ``length``; a one-token step leaves it to the caller, who sets
        ``position`` (a captured graph must not hold a Python counter)."""
        if tokens > 1:
            super().advance(tokens)


@contextmanager
def _without_initialisation() -> Iterator[None]:
    """Skip the random init of linear and embedding layers: every weight is assigned after.

    (On the meta device ``normal_`` alone costs 1.3 s the first time, importing torch's Python
    meta kernels.)
    """
    saved = {layer: layer.reset_parameters for layer in (nn.Linear, nn.Embedding)}
    try:
        for layer in saved:
            layer.reset_parameters = lambda self: None
        yield
    finally:
        for layer, method in saved.items():
            layer.reset_parameters = method


def empty_model(config: dict) -> GPTModel:
    """The model's structure on the meta device: shapes only, no memory, no initialisation."""
    with torch.device("meta"), _without_initialisation():
        return GPTModel(config)
