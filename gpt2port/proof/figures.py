"""What every proof shares: the fixed prompt, the fp32 tolerance, a text's token ids, and the
figures of two models' logits over a text (``verify --text`` and ``compare``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import torch

from ..console.progress import progress
from ..errors import ConfigError
from ..loading import load_tokenizer

# "The dog was found in a field near the town of": the fixed prompt every check runs.
PROMPT = (464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688)
RELATIVE_TOLERANCE = 1e-4  # of the largest reference logit (at least 1): fp32 rounding, not bugs
SAMPLE_TEXT = resources.files("gpt2port") / "data" / "sample.txt"  # public domain, ~1,400 tokens


def prompt_for(config: dict) -> list[int]:
    """The fixed prompt, folded into a small test vocabulary and context if need be."""
    return [token % config["vocab_size"] for token in PROMPT][: config["context_length"]]


def token_ids(text: str | None, vocabulary: int) -> list[int]:
    """``text`` (default: the shipped sample) as GPT-2's tokenizer encodes it, folded into the
    smaller vocabulary of test models.

    Raises:
        ConfigError: as ``text_ids``.
    """
    return [token % vocabulary for token in text_ids(text)]


def text_ids(text: str | None) -> list[int]:
    """``text`` (default: the shipped sample) as GPT-2's tokenizer encodes it.

    Raises:
        ConfigError: for a text that is not a string, or one too short to score (one token
            predicts the next: two are needed).
    """
    if text is not None and not isinstance(text, str):
        raise ConfigError(f"text: a string is needed, got {type(text).__name__}",
                          hint="read the file first, or leave text out for the shipped sample")
    text = SAMPLE_TEXT.read_text(encoding="utf-8") if text is None else text
    ids = load_tokenizer().encode(text, disallowed_special=())
    if len(ids) < 2:
        raise ConfigError(f"text {text[:20]!r} encodes to {len(ids)} token(s); scoring needs "
                          "at least two (one predicts the next)",
                          hint="give a longer text, or leave text out for the shipped sample")
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


def logit_figures(first, second, ids: list[int], context: int, vocabulary: int
                  ) -> LogitFigures:
    """The figures of two logit functions (ids -> [T, V]) over ``ids`` in windows of
    ``context`` tokens, each position scored on the next id."""
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
            if len(targets) and int(targets.max()) < one.shape[-1]:  # not a classifier's scores
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
    figures.tolerance = RELATIVE_TOLERANCE * largest
    return figures
