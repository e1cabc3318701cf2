"""The checkpoint every benchmark uses: the 124M shape in the exact layout of the Hub's
``openai-community/gpt2`` (random weights: the real ones cannot be fetched here), with the
tokenizer files, written once into a temporary folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_full_size_folder(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from checkpoints import write_hub_layout
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    write_hub_layout(GPT2LMHeadModel(GPT2Config()).eval(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]  # as on the Hub
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(ROOT / "gpt2port" / "data" / name, folder / name)
    (folder / "model.safetensors").read_bytes()  # warm the page cache
    return folder
