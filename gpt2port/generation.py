"""Text generation: greedy or sampled, one token at a time."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .model import GPTModel
from .tokenizer import END_OF_TEXT_ID


def next_token(logits: torch.Tensor, *, temperature: float, top_k: int | None,
               top_p: float | None, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next id from the last position's logits (B, V) -> (B, 1)."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None:
        ordered, order = logits.sort(dim=-1, descending=True)
        before = ordered.softmax(dim=-1).cumsum(dim=-1) - ordered.softmax(dim=-1)
        ordered = ordered.masked_fill(before >= top_p, float("-inf"))  # keep the nucleus
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


@torch.inference_mode()
def stream(model: GPTModel, token_ids: torch.Tensor, max_new_tokens: int, *,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           seed: int | None = None, stop_at_eos: bool = False) -> Iterator[torch.Tensor]:
    """Yield each new column of ids (B, 1) as soon as it is chosen."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=token_ids.device).manual_seed(seed)
    context = model.config["context_length"]
    for _ in range(max_new_tokens):
        logits = model(token_ids[:, -context:])[:, -1, :]  # (B, V)
        chosen = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                            generator=generator)  # (B, 1)
        token_ids = torch.cat([token_ids, chosen], dim=1)
        yield chosen
        if stop_at_eos and bool((chosen == END_OF_TEXT_ID).all()):
            return


def generate(model: GPTModel, token_ids: torch.Tensor, max_new_tokens: int, **options
             ) -> torch.Tensor:
    """The prompt ids (B, T) followed by up to ``max_new_tokens`` new ones; see ``stream``."""
    new = list(stream(model, token_ids, max_new_tokens, **options))
    return torch.cat([token_ids, *new], dim=1)
