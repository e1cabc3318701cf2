"""For weight-equivalence tests: ``assert_equivalent(a, b)`` fails a test with ``compare``'s
report, naming what differs and where."""

from __future__ import annotations

from pathlib import Path

from .proof.comparison import Comparison, compare


def assert_equivalent(a: str | Path, b: str | Path, *, atol: float | None = None,
                      max_kl: float | None = None, text: str | None = None) -> Comparison:
    """Fail unless checkpoints ``a`` and ``b`` compute the same model: every tensor bit-equal,
    or logits within ``atol`` (default: the fp32 tolerance, 1e-4 of the largest logit) with the
    same top-1 token everywhere; with ``max_kl`` instead, a KL divergence of at most that at
    every token (for a dtype change, whose logits move by more than fp32 rounding).

    Raises:
        AssertionError: with the comparison's report.
    """
    found = compare(a, b, text=text)
    if found.verdict == "identical":
        return found
    logits = found.logits if not found.only_in_a and not found.only_in_b else None
    tolerance = atol if atol is not None else logits.tolerance if logits else 0.0
    if logits is None:
        passed = False
    elif max_kl is not None:  # a dtype change: judged by the distributions, not the logits
        passed = logits.max_kl <= max_kl
    else:
        passed = logits.max_abs <= tolerance and logits.top1_agreement == 1.0
    if not passed:
        raise AssertionError(f"{a} and {b} are not equivalent "
                             f"(atol {tolerance:.3g}, max_kl {max_kl}):\n{found.report()}")
    return found
