"""The decoding engine: a ``GPTModel`` run token by token over a KV cache, fast.

``Decoder`` runs the model's own modules (norms, GELU, embeddings: whatever the model holds) with
three things a plain forward pass cannot have: the cache, the step's product kernel
(``kernels.for_decoding``) and, where a block's query, key and value weights are adjacent rows of
one tensor (the Hub's ``c_attn``, or as the loader places them), one product for the three.
``Continuation`` keeps the ids of a generation and slides its window past the context length.
Everything is prepared once per generation and held by these objects: nothing in torch or in
this package changes for anyone else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..io.rows import stacked_rows
from ..model import FeedForward, GPTModel, MultiHeadAttention, TransformerBlock
from . import kernels
from .compiled_step import compiled_step
from .cuda_graphs import CapturedStep
from .kv_cache import KVCache, StaticKVCache


def is_plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` itself, without hooks: its product may run by another kernel. A replaced
    layer (an adapter, say) or a hooked one is called as the module it is."""
    return type(module) is nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)


def cacheable(model: GPTModel) -> GPTModel:
    """``model`` when its blocks can run over a KV cache: each block's attention is GPT-2's
    (``MultiHeadAttention``, or a subclass); any other layer may be replaced.

    Raises:
        ConfigError: naming the first block whose attention is something else.
    """
    for index, block in enumerate(model.transformer_blocks):
        attention = getattr(block, "attention", None)
        if not isinstance(block, TransformerBlock) or not isinstance(attention,
                                                                    MultiHeadAttention):
            found = type(attention if isinstance(block, TransformerBlock) else block).__name__
            raise ConfigError(f"block {index}'s attention is a {found}: generation caches the "
                              "keys and values of GPT-2's MultiHeadAttention",
                              hint="keep MultiHeadAttention (replacing its projections is "
                              "fine), or run the model's forward pass yourself")
    return model


def packed_projection(attention: MultiHeadAttention
                      ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The query, key and value projections as one (3D, D) weight and (3D,) bias, viewing their
    tensors, or None where they are not adjacent or a projection is not a plain ``nn.Linear``."""
    layers = (attention.query_projection, attention.key_projection, attention.value_projection)
    if not all(map(is_plain_linear, layers)):
        return None
    weight = stacked_rows(tuple(layer.weight for layer in layers))
    if layers[0].bias is None:
        return None if weight is None else (weight, None)
    bias = stacked_rows(tuple(layer.bias for layer in layers))
    return None if weight is None or bias is None else (weight, bias)


class Decoder:
    """``model`` with a KV cache for ``batch_size`` sequences of up to ``capacity`` tokens.

    ``forward`` runs tokens after the cached ones and caches them. One-token steps at batch 1
    run their products by the kernel ``kernels.for_decoding`` chooses (``step``); with
    ``static_cache`` they keep fixed shapes, and on CUDA replay one captured CUDA graph
    (``cuda_graphs``). They, and prompts of up to 16 tokens in all, run by the compiled step
    (``compiled_step``), every sequence of the batch in one call, where ``compiled`` is True, or
    None (the default) and it applies: a plain model on the CPU, a C compiler, no static cache,
    an fp32 batch of at most 16.
    """

    def __init__(self, model: GPTModel, batch_size: int, capacity: int | None = None, *,
                 static_cache: bool = False, compiled: bool | None = None):
        self.model = cacheable(model)
        self.cache = (StaticKVCache if static_cache else KVCache)(model, batch_size, capacity)
        blocks = model.transformer_blocks
        self.packed = [packed_projection(block.attention) for block in blocks]
        self.step = kernels.for_decoding(model.token_embedding_table.weight, batch_size)
        self.static_cache = static_cache
        self.captured: CapturedStep | None = None  # with static_cache: made at the first step
        wanted = compiled or (compiled is None and not static_cache)
        self.compiled = (compiled_step(model, self.cache.keys, self.cache.values, self.packed,
                                       required=bool(compiled)) if wanted else None)

    def forward(self, token_ids: torch.Tensor, padding: torch.Tensor | None = None, *,
                last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V), or (B, 1, V) for the last position only, of ``token_ids`` (B, T)
        after the cached tokens; ``padding`` (B, cached + T) marks left padding with 0."""
        tokens = token_ids.shape[1]
        if self.compiled is not None and self.compiled.runs(token_ids):
            logits = self.compiled(token_ids, self.cache.length, padding, last_only=last_only)
        elif tokens > 1:
            logits = self.logits(token_ids, padding, F.linear, last_only=last_only)
        elif self.static_cache and padding is None:
            self.captured = self.captured or CapturedStep(self)
            with self.step.running():
                logits = self.captured(token_ids)[:, None]
        else:
            with self.step.running():
                logits = self.logits(token_ids, padding, self.step.product, last_only=last_only)
        self.cache.advance(tokens)
        return logits

    def logits(self, token_ids: torch.Tensor, padding: torch.Tensor | None,
               product: kernels.Product, *, last_only: bool) -> torch.Tensor:
        """The forward pass over the cache, which it fills but does not advance."""
        model, cache = self.model, self.cache
        positions, mask = cache.positions_and_mask(token_ids.shape[1], padding)
        x = model.token_embedding_table(token_ids) + model.position_embedding_table(positions)
        x = model.dropout_embedding(x)  # (B, T, D)
        for layer, block in enumerate(model.transformer_blocks):
            attended = self.attend(layer, block.attention, block.attention_norm(x), mask, product)
            x = x + block.residual_dropout(attended)
            normed = block.feed_forward_norm(x)
            x = x + block.residual_dropout(self.feed_forward(block.feed_forward, normed, product))
        if last_only:
            x = x[:, -1:]  # (B, 1, D)
        return self.linear(model.output_head, model.layer_norm(x), product)  # (B, T, V)

    def attend(self, layer: int, attention: MultiHeadAttention, x: torch.Tensor,
               mask: torch.Tensor | None, product: kernels.Product) -> torch.Tensor:
        """The attention of block ``layer``, its keys and values cached."""
        batch, tokens, _ = x.shape  # (B, T, D)
        packed = self.packed[layer]
        if packed is not None:  # (B, T, 3D) -> 3 x (B, H, T, Dh)
            queries, keys, values = product(x, *packed).view(
                batch, tokens, 3, attention.number_of_heads, attention.head_dimension
            ).permute(2, 0, 3, 1, 4)
        else:
            queries, keys, values = (
                attention.split_heads(self.linear(projection, x, product))
                for projection in (attention.query_projection, attention.key_projection,
                                   attention.value_projection))  # 3 x (B, H, T, Dh)
        keys, values = self.cache.store(layer, keys, values)  # (B, H, S, Dh), S = cached + T
        context = F.scaled_dot_product_attention(
            queries.to(keys.dtype), keys, values, attn_mask=mask,
            is_causal=mask is None and tokens > 1,
            dropout_p=attention.dropout_rate if attention.training else 0.0,
            scale=attention.scale,
        ).to(x.dtype)  # (B, H, T, Dh); a CPU cache keeps half-precision models' keys in fp32
        return self.linear(attention.output_projection, attention.merge_heads(context), product)

    def feed_forward(self, feed_forward: nn.Module, x: torch.Tensor,
                     product: kernels.Product) -> torch.Tensor:
        if type(feed_forward) is not FeedForward:  # replaced: run as it is
            return feed_forward(x)
        hidden = feed_forward.activation(self.linear(feed_forward.expansion, x, product))
        return self.linear(feed_forward.contraction, hidden, product)

    @staticmethod
    def linear(layer: nn.Module, x: torch.Tensor, product: kernels.Product) -> torch.Tensor:
        return product(x, layer.weight, layer.bias) if is_plain_linear(layer) else layer(x)


class Continuation:
    """The ids of a generation: the prompts (B, T), then each chosen column; the logits of the
    next token after each. Past the context length the window slides and is recomputed, as
    GPT-2's absolute positions need."""

    def __init__(self, model: GPTModel, token_ids: torch.Tensor, max_new_tokens: int, *,
                 attention_mask: torch.Tensor | None = None, static_cache: bool = False,
                 compiled: bool | None = None):
        batch, prompt_length = token_ids.shape
        total = prompt_length + max_new_tokens
        self.context = model.config["context_length"]
        self.ids = torch.empty(batch, total, dtype=torch.long, device=token_ids.device)
        self.ids[:, :prompt_length] = token_ids
        self.padding = None
        if attention_mask is not None:  # (B, total): the new tokens are never padding
            self.padding = torch.ones_like(self.ids)
            self.padding[:, :prompt_length] = attention_mask
        self.begin, self.end = 0, prompt_length  # the window the cache holds
        self.decoder = Decoder(model, batch, min(self.context, total), static_cache=static_cache,
                               compiled=compiled)

    def start(self) -> torch.Tensor:
        """The logits (B, V) after the prompts."""
        return self._recompute()

    def extend(self, chosen: torch.Tensor) -> torch.Tensor:
        """Append ``chosen`` (B, 1); the logits (B, V) after it."""
        self.ids[:, self.end:self.end + 1] = chosen
        self.end += 1
        if self.decoder.cache.is_full:
            return self._recompute()
        return self.decoder.forward(chosen, self._padding(), last_only=True)[:, -1]

    def _recompute(self) -> torch.Tensor:
        self.begin = max(0, self.end - self.context)
        self.decoder.cache.reset()
        return self.decoder.forward(self.ids[:, self.begin:self.end], self._padding(),
                                    last_only=True)[:, -1]

    def _padding(self) -> torch.Tensor | None:
        return None if self.padding is None else self.padding[:, self.begin:self.end]
