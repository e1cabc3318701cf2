"""Text generation: greedy or sampled, one token at a time (``decoding`` runs the model)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import ConfigError
from ..model import GPTModel
from ..text.tokenizer import END_OF_TEXT_ID
from .arguments import check_mask, check_model, check_options, checked_ids, checked_rows
from .decoding import Continuation


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


def pad_left(prompts: list[list[int]], *, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> ids (B, T) padded on the left, and their mask (B, T).

    Raises:
        ConfigError: for an empty list or an empty prompt.
    """
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(
            isinstance(prompt, (list, tuple)) and prompt for prompt in prompts):
        raise ConfigError("prompts must be a non-empty list of non-empty id lists",
                          hint="wrap one prompt as [ids]")
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, device=device)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def stream(model: GPTModel, token_ids: torch.Tensor, max_new_tokens: int, *,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           seed: int | None = None, stop_at_eos: bool = False,
           attention_mask: torch.Tensor | None = None, static_cache: bool = False,
           compile: bool | None = None) -> Iterator[torch.Tensor]:
    """Yield each new column of ids (B, 1) as soon as it is chosen.

    Keys and values go to a preallocated cache (``decoding.Continuation``), so each step runs the
    model on one token. Past the context length the window slides and is recomputed, as GPT-2's
    absolute positions need.
    ``attention_mask`` (B, T) marks left padding (see ``pad_left``). With ``stop_at_eos`` a row
    that has produced <|endoftext|> keeps producing it until every row has.

    ``static_cache`` runs the one-token steps over a ``kv_cache.StaticKVCache``, on CUDA
    replayed from a CUDA graph (``cuda_graphs.CapturedStep``); prompts of one length only (no
    ``attention_mask``). Opt-in: its GPU speed is still to be measured (docs/benchmarks.md).

    The one-token steps run by the compiled step (``compiled_step``), the whole batch in one call,
    wherever it applies: on the CPU, fp32/fp16/bf16, a plain model (no replaced or hooked layer),
    a C compiler on the machine (built on first use, about a second, then cached on disk), no
    ``static_cache``, an fp32 batch of at most 16 (MKL is faster past it); elsewhere by the
    regular step, with no error. Prompts of up to 16 tokens in all run by it too, longer ones by
    the regular path. ``compile=True`` asks for it and raises where it cannot run;
    ``compile=False`` forces the regular step.

    Raises:
        ConfigError: at once, for arguments that cannot work: a model that is not a language
            model, ids outside its vocabulary or not whole numbers, a mask that does not fit,
            options out of range, ``compile=True`` for a model or batch it cannot run.
        CompileError: ``compile=True`` where no C compiler can build the step.
    """
    model = check_model(model)
    check_options(max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    token_ids = checked_ids(model, token_ids)
    attention_mask = check_mask(attention_mask, token_ids)
    if static_cache and attention_mask is not None:
        raise ConfigError("static_cache takes prompts of one length (no attention_mask)",
                          hint="pad nothing, or leave static_cache off")
    with torch.inference_mode():  # made here, so that compile's errors come at once
        continuation = Continuation(model, token_ids, max_new_tokens,
                                    attention_mask=attention_mask, static_cache=static_cache,
                                    compiled=compile)
    return _stream(model, continuation, token_ids, max_new_tokens, temperature=temperature,
                   top_k=top_k, top_p=top_p, seed=seed, stop_at_eos=stop_at_eos)


@torch.inference_mode()
def _stream(model: GPTModel, continuation: Continuation, token_ids: torch.Tensor,
            max_new_tokens: int, *, temperature: float, top_k: int | None, top_p: float | None,
            seed: int | None, stop_at_eos: bool) -> Iterator[torch.Tensor]:
    vocabulary = model.config["vocab_size"]  # ids past it are padding rows: never chosen
    generator = None
    if seed is not None:
        generator = torch.Generator(device=token_ids.device).manual_seed(seed)
    logits = continuation.start()  # (B, V)
    finished = torch.zeros(token_ids.shape[0], 1, dtype=torch.bool, device=token_ids.device)
    for step in range(max_new_tokens):
        chosen = next_token(logits[:, :vocabulary], temperature=temperature, top_k=top_k,
                            top_p=top_p, generator=generator)  # (B, 1)
        if stop_at_eos:
            chosen = chosen.masked_fill(finished, END_OF_TEXT_ID)
            finished |= chosen == END_OF_TEXT_ID
        yield chosen
        if step + 1 == max_new_tokens or (stop_at_eos and bool(finished.all())):
            return
        logits = continuation.extend(chosen)


def generate(model: GPTModel, token_ids: torch.Tensor | list[list[int]], max_new_tokens: int,
             *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, stop_at_eos: bool = False, static_cache: bool = False,
             compile: bool | None = None) -> torch.Tensor | list[list[int]]:
    """The prompt ids (B, T) followed by up to ``max_new_tokens`` new ones; ``stream`` says what
    each option does.

    Prompts of different lengths may come as a list of id lists; each comes back as a list with
    its new ids (up to and including <|endoftext|> with ``stop_at_eos``).

    Raises:
        ConfigError: at once, for arguments that cannot work (as ``stream``).
        CompileError: ``compile=True`` where no C compiler can build the step.
    """
    options = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
               "stop_at_eos": stop_at_eos, "static_cache": static_cache, "compile": compile}
    if isinstance(token_ids, torch.Tensor):
        new = list(stream(model, token_ids, max_new_tokens, **options))
        return torch.cat([token_ids.long(), *new], dim=1)  # checked by stream
    model = check_model(model)
    token_ids = checked_rows(model, token_ids)
    ids, mask = pad_left(token_ids, device=model.token_embedding_table.weight.device)
    if len(set(map(len, token_ids))) == 1:
        mask = None  # nothing padded
    new = torch.cat(list(stream(model, ids, max_new_tokens, attention_mask=mask, **options))
                    or [ids[:, :0]], dim=1).tolist()
    results = []
    for prompt, continuation in zip(token_ids, new, strict=True):
        if stop_at_eos and END_OF_TEXT_ID in continuation:
            continuation = continuation[:continuation.index(END_OF_TEXT_ID) + 1]
        results.append(list(prompt) + continuation)
    return results
