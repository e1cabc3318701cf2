"""The keys and values of earlier tokens, kept for generation: each step runs one token.

A cache gives each forward pass the positions of its tokens and the mask of the keys they see,
stores their keys and values, advances past them and resets itself; ``decoding.Decoder`` drives
it.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every block, preallocated for ``capacity`` tokens so that a step writes
    in place instead of concatenating: two tensors (L, B, H, capacity, Dh).

    On the CPU a half-precision model's cache is fp32: for a decoding step the CPU's fp32
    attention kernel takes 17 us per block, its fp16 one 108 us and bf16 72 us (measured,
    docs/benchmarks.md)."""

    def __init__(self, model, batch_size: int, capacity: int | None = None):
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
        self.length = 0  # tokens cached

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def is_full(self) -> bool:
        return self.length == self.capacity

    def positions_and_mask(self, tokens: int, padding: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The positions (T,) or (B, T) of ``tokens`` new tokens, and the mask (B or 1, 1, T, S)
        of the keys each sees (None: causal, or all when T = 1). ``padding`` (B, cached + T), 1
        for tokens and 0 for padding, lets prompts of different lengths share a batch."""
        start, device = self.length, self.keys.device
        if start + tokens > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} tokens; {start + tokens} were given")
        if padding is not None:
            real = padding.bool()  # (B, S)
            positions = (real.long().cumsum(-1) - 1).clamp(min=0)[:, start:]  # (B, T)
            return positions, attention_mask(real, start, tokens)
        positions = torch.arange(start, start + tokens, device=device)  # (T,)
        mask = attention_mask(None, start, tokens, device) if start and tokens > 1 else None
        return positions, mask

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this pass's (B, H, T, Dh) keys and values after the cached ones; return all."""
        start, tokens = self.length, keys.shape[2]
        layer_keys, layer_values = self.by_layer[layer]  # (B, H, capacity, Dh) each
        layer_keys.narrow(2, start, tokens).copy_(keys)  # narrow: one op, where indexing is four
        layer_values.narrow(2, start, tokens).copy_(values)
        return layer_keys.narrow(2, 0, start + tokens), layer_values.narrow(2, 0, start + tokens)

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` more as cached, once every block has stored them."""
        self.length += tokens

    def reset(self) -> None:
        """Forget every cached token (the window slides: it is recomputed)."""
        self.length = 0


class StaticKVCache(KVCache):
    """A cache whose one-token steps keep every shape and address fixed, so that a step can be
    captured once as a CUDA graph and replayed for each token: the position is a tensor, a step
    writes its keys at that position, and attention runs over the whole capacity with the keys
    not yet written masked out. Several tokens at once (a prompt) are stored as in ``KVCache``.
    """

    def __init__(self, model, batch_size: int, capacity: int | None = None):
        super().__init__(model, batch_size, capacity)
        # attention reads every slot, and a masked slot still multiplies its value by 0: never
        # left uninitialised (a NaN there made every logit NaN, seen on a busy machine)
        self.keys.zero_()
        self.values.zero_()
        device = self.keys.device
        self.position = torch.zeros((), dtype=torch.long, device=device)  # where a step writes
        self.key_index = torch.arange(self.capacity, device=device)  # (S,)

    def positions_and_mask(self, tokens: int, padding: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if tokens > 1:
            return super().positions_and_mask(tokens, padding)
        return self.position.view(1), (self.key_index <= self.position)[None, None, None]

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        if keys.shape[2] > 1:
            return super().store(layer, keys, values)
        layer_keys, layer_values = self.by_layer[layer]
        layer_keys.index_copy_(2, self.position.view(1), keys.to(layer_keys.dtype))
        layer_values.index_copy_(2, self.position.view(1), values.to(layer_values.dtype))
        return layer_keys, layer_values  # (B, H, S, Dh): masked by positions_and_mask

    def advance(self, tokens: int) -> None:
        """Outside a captured step: the position tensor moves with the count."""
        super().advance(tokens)
        self.position.fill_(self.length)

    def reset(self) -> None:
        super().reset()
        self.position.fill_(0)


def attention_mask(real: torch.Tensor | None, start: int, tokens: int,
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
