"""``python -m gpt2port``: the same as the ``gpt2port`` command."""

import sys

from .cli import main

sys.exit(main())
