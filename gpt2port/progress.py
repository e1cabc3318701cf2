"""Progress bars on stderr, as huggingface_hub shows its downloads: tqdm, silent when stderr is
not a terminal or when ``HF_HUB_DISABLE_PROGRESS_BARS=1``."""

from __future__ import annotations

import sys

from huggingface_hub.utils import tqdm


def progress(description: str, total: int, *, unit: str = "step") -> tqdm:
    """A bar of ``total`` ``unit``s; use as a context manager and ``update()`` it."""
    return tqdm(total=total, desc=description, unit=unit, disable=None, file=sys.stderr,
                leave=False)


def stage(bar: tqdm, doing: str) -> None:
    """Say what the bar's work is doing now."""
    bar.set_postfix_str(doing, refresh=True)
