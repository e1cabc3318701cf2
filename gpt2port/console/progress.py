"""Progress bars on stderr, as huggingface_hub shows its downloads: tqdm, silent when stderr is
not a terminal or when ``HF_HUB_DISABLE_PROGRESS_BARS=1``."""

from __future__ import annotations

import sys

from huggingface_hub.utils import tqdm

from .phases import phase


def progress(description: str, total: int) -> tqdm:
    """A bar of ``total`` steps; use as a context manager and ``update()`` it per step."""
    return tqdm(total=total, desc=description, unit="step", disable=None, file=sys.stderr,
                leave=False)


def stage(bar: tqdm, doing: str) -> None:
    """Say what the bar's work is doing now (and, where asked for, on stderr: ``phases``)."""
    phase(doing)
    bar.set_postfix_str(doing, refresh=True)
