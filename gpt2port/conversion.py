"""``convert``: a checkpoint in any supported format -> another, through the model's own names."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ConfigError
from .files import copy_tokenizer, write_folder
from .formats import gguf, huggingface, native, openai
from .loading import model_from_checkpoint, open_checkpoint, resolve

WRITERS = {"hf": huggingface.save, "openai": openai.save, "native": native.save,
           "gguf": gguf.save}
QUANTIZATIONS = ("f32", "f16", "q8_0")  # what gguf.save writes; other formats take a torch dtype


def convert(source: str | Path, destination: str | Path, *, to: str,
            dtype: torch.dtype | str | None = None, revision: str | None = None) -> Path:
    """Read ``source`` (preset, Hub id, folder or file), write it to the new folder
    ``destination`` in format ``to``, with the tokenizer files when the source has them.

    The folder appears only when complete.
    """
    if dtype == "q8_0" and to != "gguf":
        raise ConfigError("q8_0 is a GGUF quantization", hint="use --to gguf, or f32/f16/bf16")
    folder = resolve(source, revision=revision)
    tokenizer = folder if folder.is_dir() else folder.parent
    options = {}
    if to == "gguf":  # quantized by the writer, from an f32 model
        options = {"quantization": dtype or "f32", "tokenizer": tokenizer}
        dtype = "f32"
    model = model_from_checkpoint(open_checkpoint(folder), dtype=dtype)
    write = WRITERS[to]

    def fill(output: Path) -> None:
        write(model, output, **options)
        copy_tokenizer(tokenizer, output, *([openai.TOKENIZER_FILES] if to == "openai" else []))

    return write_folder(Path(destination), fill)
