"""Where a long command is: ``phase: NAME`` on stderr when ``GPT2PORT_PHASES`` is set, so that
a test (or a script) can act at a known moment (send Ctrl-C mid-download) without guessing how
fast the machine is."""

from __future__ import annotations

import os
import sys


def phase(name: str) -> None:
    """Say that the work ``name`` starts, where ``GPT2PORT_PHASES`` asks for it."""
    if os.environ.get("GPT2PORT_PHASES"):
        # one write, the newline in it: print() writes the text and the newline apart, and a
        # signal landing between them ran the next line ("interrupted") onto this one
        sys.stderr.write(f"phase: {name}\n")
        sys.stderr.flush()
