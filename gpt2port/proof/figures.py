"""What every proof shares: the fixed prompt, the fp32 tolerance, a text's token ids, and the
figures of two models' logits over a text (``verify --text`` and ``compare``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import torch

from ..console.progress import progress
from ..errors import ConfigError, TokenizerError
from ..text.encoders import Tokenizer

# "The dog was found in a field near the town of": the fixed prompt every check runs, as GPT-2's
# tokenizer encodes it
PROMPT_TEXT = "The dog was found in a field near the town of"
PROMPT = (464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688)
RELATIVE_TOLERANCE = 1e-4  # of the largest reference logit (at least 1): fp32 rounding, not bugs
SAMPLE_TEXT = resources.files("gpt2port") / "data" / "sample.txt"  # public domain, ~1,400 tokens


def prompt_for(config: dict, tokenizer: Tokenizer | None = None) -> list[int]:
    """The fixed prompt as the model's ids (``described_prompt``'s)."""
    return described_prompt(config, tokenizer)[0]


def described_prompt(config: dict, tokenizer: Tokenizer | None = None) -> tuple[list[int], str]:
    """The fixed prompt as the model's ids, and what they are in words: its text by the model's
    tokenizer; without one, GPT-2's ids where the model has them, else ids spread evenly over
    its vocabulary (a model with no text: a small test model); never more than its context."""
    vocabulary, context = config["vocab_size"], config["context_length"]
    ids = tokenizer.encode(PROMPT_TEXT) if tokenizer is not None else list(PROMPT)
    if max(ids, default=0) >= vocabulary or len(ids) < 2:
        # from 1 to vocabulary - 2: the first and last ids are often padding (BERT's [PAD],
        # GPT-2's <|endoftext|> as pad), which a classifier does not score
        ids = [1 + round(i * (vocabulary - 3) / (len(PROMPT) - 1)) for i in range(len(PROMPT))]
        return ids[:context], (f"{len(ids[:context])} ids spread over the vocabulary of "
                               f"{vocabulary} (no tokenizer for this vocabulary: not a text)")
    by = (f"by the model's tokenizer ({tokenizer.kind})" if tokenizer is not None
          else "of GPT-2's tokenizer")
    return ids[:context], f"{PROMPT_TEXT!r}, {len(ids[:context])} ids {by}"


def drawn_ids(config: dict, count: int = 1024) -> list[int]:
    """``count`` ids drawn (seeded) across the model's vocabulary: what is compared for a model
    that has no tokenizer to encode a text with."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(config["vocab_size"], (count,), generator=generator).tolist()


def checked_text(text: object) -> str:
    """``text``, or the shipped sample for None.

    Raises:
        ConfigError: for a text that is not a string.
    """
    if text is not None and not isinstance(text, str):
        raise ConfigError(f"text: a string is needed, got {type(text).__name__}",
                          hint="read the file first, or leave text out for the shipped sample")
    return SAMPLE_TEXT.read_text(encoding="utf-8") if text is None else text


def text_ids(text: str | None, tokenizer: Tokenizer | None, config: dict, origin: str
             ) -> list[int]:
    """``text`` (default: the shipped sample) as the model's tokenizer encodes it.

    Raises:
        ConfigError: for a text that is not a string, or one too short to score (one token
            predicts the next: two are needed).
        TokenizerError: for a model with no tokenizer (and a vocabulary not GPT-2's), or one
            whose ids the model does not have.
    """
    text = checked_text(text)
    if tokenizer is None:
        raise TokenizerError(f"{origin}: no tokenizer, and its vocabulary ({config['vocab_size']} "
                             "tokens) is not GPT-2's: text cannot be turned into its ids",
                             hint="pass the model's tokenizer (--tokenizer PATH|REPO, "
                             "tokenizer=); without a text, ids spread over the vocabulary are "
                             "compared")
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise ConfigError(f"text {text[:20]!r} encodes to {len(ids)} token(s); scoring needs "
                          "at least two (one predicts the next)",
                          hint="give a longer text, or leave text out for the shipped sample")
    if max(ids) >= config["vocab_size"]:
        raise TokenizerError(f"{origin}: the text encodes to id {max(ids)}, and the model's "
                             f"vocabulary is {config['vocab_size']}",
                             hint="pass the model's own tokenizer (--tokenizer PATH|REPO, "
                             "tokenizer=)")
    return ids


@dataclass
class LogitFigures:
    """Two models' logits over one text, in windows of the context length."""

    tokens: int = 0
    windows: int = 0
    max_abs: float = 0.0
    tolerance: float = 0.0  # the fp32 tolerance: 1e-4 of the largest logit (at least 1)
    mean_kl: float = 0.0  # KL(first || second) per token
    max_kl: float = 0.0
    top1_agreement: float = 1.0
    perplexity_first: float = 0.0
    perplexity_second: float = 0.0

    @property
    def within(self) -> bool:
        """Within fp32 rounding: the logits within the tolerance, the same top-1 token."""
        return self.max_abs <= self.tolerance and self.top1_agreement == 1.0

    def report(self, first: str, second: str) -> str:
        return (f"logits over {self.tokens} tokens ({self.windows} window(s)): max abs diff "
                f"{self.max_abs:.3g} (tolerance {self.tolerance:.3g}), KL mean "
                f"{self.mean_kl:.3g} max {self.max_kl:.3g}, top-1 agreement "
                f"{self.top1_agreement:.2%}" + ("" if math.isnan(self.perplexity_first) else
                                                f", perplexity {first} "
                                                f"{self.perplexity_first:.4g} {second} "
                                                f"{self.perplexity_second:.4g}"))


def logit_figures(first, second, ids: list[int], context: int, vocabulary: int, *,
                  from_text: bool = True, relative: float = RELATIVE_TOLERANCE) -> LogitFigures:
    """The figures of two logit functions (ids -> [T, V]) over ``ids`` in windows of
    ``context`` tokens, each position scored on the next id (perplexity only for ids of a
    text: drawn ids have none worth printing); the tolerance ``relative`` to the largest
    logit."""
    starts = range(0, max(len(ids) - 1, 1), context)
    figures, kl_sum, agree = LogitFigures(windows=len(starts)), 0.0, 0
    nll = [0.0, 0.0]
    largest = 1.0
    with progress("compare logits", len(starts)) as bar:
        for start in starts:
            window = ids[start:start + context]
            one = torch.as_tensor(first(window))[:, :vocabulary].float()
            other = torch.as_tensor(second(window))[:, :vocabulary].float()
            figures.max_abs = max(figures.max_abs, float((one - other).abs().max()))
            largest = max(largest, float(one.abs().max()))
            log_one, log_other = one.log_softmax(-1), other.log_softmax(-1)
            kl = (log_one.exp() * (log_one - log_other)).sum(-1).clamp_min(0)
            kl_sum += float(kl.sum())
            figures.max_kl = max(figures.max_kl, float(kl.max()))
            agree += int((one.argmax(-1) == other.argmax(-1)).sum())
            figures.tokens += len(window)
            targets = torch.tensor(ids[start + 1:start + len(window) + 1])
            rows = torch.arange(len(targets))
            if from_text and len(targets) and int(targets.max()) < one.shape[-1]:  # (not a
                # classifier's scores)
                nll[0] -= float(log_one[rows, targets].sum())
                nll[1] -= float(log_other[rows, targets].sum())
            else:
                nll = [math.nan, math.nan]
            bar.update()
    scored = max(len(ids) - 1, 1)
    figures.mean_kl = kl_sum / max(figures.tokens, 1)
    figures.top1_agreement = agree / max(figures.tokens, 1)
    figures.perplexity_first = math.exp(nll[0] / scored)
    figures.perplexity_second = math.exp(nll[1] / scored)
    figures.tolerance = relative * largest
    return figures
