"""ONNX, as optimum exports GPT-2 and transformers.js loads it: a folder with ``config.json``,
``generation_config.json``, the tokenizer files and ``onnx/model.onnx`` (``model_fp16.onnx``
for f16): one decoder graph with past key values (``formats/onnx_graph.py``), its weights as
initializers under transformers' names, inside the file or, past protobuf's 2 GiB, in
``model.onnx_data`` beside it.

Writing needs the onnx package (``pip install gpt2port[onnx]``); reading the weights back needs
nothing (``io/onnx_file.py``), and is done for the files gpt2port writes only: optimum's and
torch.onnx's exports fold and rename weights (``onnx::MatMul_670``), so they are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from ..io.arrays import Arrays
from ..io.onnx_file import read_onnx, write_onnx
from ..io.readers import read_json
from ..text.vocabulary import Vocabulary, write_hf_files, write_tokenizer_files
from .base import Candidate, Format, Raw
from .huggingface import (
    CONFIG_TABLE,
    HINT,
    TABLES,
    check_architecture,
    config_from_model,
    write_generation_config,
)
from .onnx_graph import PREFIX, build

FOLDER = "onnx"
FILES = {"f32": "model.onnx", "f16": "model_fp16.onnx"}
HALF_TOLERANCE = 1e-2  # fp16 keeps about 3 significant digits
WRITER_HINT = "pip install 'gpt2port[onnx]' (the onnx package builds the graph)"


def model_file(path: Path) -> Path | None:
    """The ONNX file of a folder (``onnx/model.onnx``, ``onnx/model_fp16.onnx``) or the path
    itself when it is one."""
    if path.is_file():
        return path if path.suffix == ".onnx" else None
    return next((path / FOLDER / name for name in FILES.values()
                 if (path / FOLDER / name).is_file()), None)


def config_path(onnx_file: Path) -> Path:
    """``config.json`` of the folder an ONNX file is in (or of the folder above ``onnx/``)."""
    folder = onnx_file.parent
    return (folder.parent if folder.name == FOLDER else folder) / "config.json"


class Onnx(Format):
    name = "onnx"
    name_table = TABLES["language_model"]
    config_table = CONFIG_TABLE
    config_hint = HINT
    title = "ONNX (onnxruntime, optimum, transformers.js)"
    summary = ("`onnx/model.onnx` (`model_fp16.onnx` for f16; `model.onnx_data` beside it past "
               "2 GiB) + `config.json`: one decoder with past key values; gpt2port reads back "
               "only the files it writes")
    dtypes = ("f32", "f16")
    vocabulary = "rows"
    cannot_represent = ("a classifier or any head but the language model's (refused); a head "
                        "bias (refused); dropout (inference only: kept in config.json); bf16 "
                        "(written as f32, exact)")
    proof = ("onnxruntime runs the export: optimum's `ORTModelForCausalLM.generate` (with past "
             "key values) gives transformers' greedy ids on the source in f32; transformers.js "
             "`pipeline('text-generation')` loads the folder as it is; logits within 1e-4 (f32)")
    reference_reads_with = "the onnx package (onnx.load, numpy_helper)"
    runtime = "onnxruntime"

    def recognises(self, candidate: Candidate) -> bool:
        return model_file(candidate.path) is not None

    def read_raw(self, candidate: Candidate) -> Raw:
        found = model_file(candidate.path)
        tensors, producer = read_onnx(found)
        if producer != "gpt2port":
            raise CheckpointError(
                f"{found}: an ONNX model written by {producer or 'an unnamed producer'}, not "
                "gpt2port: exports by optimum and torch.onnx fold and rename weights "
                "(onnx::MatMul_...), so they cannot be read back reliably",
                hint="convert the checkpoint it was exported from instead")
        path = config_path(found)
        if not path.is_file():
            raise CheckpointError(f"{found}: no config.json beside its onnx/ folder",
                                  hint="keep the folder gpt2port wrote as it is")
        hf_config = read_json(path)
        check_architecture(hf_config, origin=str(path))
        return Raw(str(found), tensors, hf_config, config_origin=str(path))

    def writing_dtype(self, dtype: str | None, model) -> str:
        """f16 for an f16 model, else f32 (a bf16 model widens exactly)."""
        if dtype is not None:
            return dtype
        return "f16" if model.token_embedding_table.weight.dtype == torch.float16 else "f32"

    def write_raw(self, destination: Path, tensors, config: dict, *, dtype: str | None,
                  vocabulary: Vocabulary | None) -> None:
        """``onnx/model.onnx`` (or ``model_fp16.onnx``) streamed a tensor at a time, and
        ``config.json`` + ``generation_config.json`` as transformers and transformers.js read
        them."""
        try:
            import onnx  # noqa: F401 - the graph is built with its helpers
        except ImportError:
            raise ConfigError("--to onnx needs the onnx package", hint=WRITER_HINT) from None
        kind = dtype or "f32"
        tied = "lm_head.weight" not in tensors.shapes
        model, graph = build(config, half=kind == "f16", tied=tied)
        (destination / FOLDER).mkdir()
        path = destination / FOLDER / FILES[kind]
        names = {name: name if name == "lm_head.weight" else PREFIX + name
                 for name in tensors.shapes}
        external = write_onnx(path, model, graph, tensors, names)
        hf_config = config_from_model(config, vocabulary.roles if vocabulary else None)
        hf_config["use_cache"] = True
        settings = {"dtype": "fp16" if kind == "f16" else "fp32"}
        if external:  # transformers.js fetches model.onnx_data only when told to
            settings["use_external_data_format"] = {path.name: 1}
        hf_config["transformers.js_config"] = settings
        (destination / "config.json").write_text(json.dumps(hf_config, indent=2))
        write_generation_config(destination, hf_config)

    def write_tokenizer(self, vocabulary: Vocabulary, folder: Path, config: dict) -> None:
        """transformers' files as they were read, and ``tokenizer.json`` (which transformers.js
        reads, and nothing else) written from a byte-level BPE read without one."""
        if vocabulary.kind == "bpe":
            write_hf_files(vocabulary, folder, config["context_length"])
        write_tokenizer_files(vocabulary, folder, config["context_length"])

    def tokenizer_losses(self, vocabulary: Vocabulary) -> list[str]:
        if vocabulary.kind in ("bpe", "tokenizer.json") or any(
                name == "tokenizer.json" for name, _ in vocabulary.files):
            return []
        return [(f"transformers.js reads tokenizer.json only, and this {vocabulary.kind} "
                "tokenizer is written as its own files (transformers and onnxruntime users "
                "read them)")]

    def reference_tensors(self, path: Path) -> tuple[Arrays, dict]:
        """The initializers read by the onnx package itself (external data included)."""
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:
            raise ConfigError(f"{path}: the NumPy reference reads ONNX files with the onnx "
                              "package", hint=WRITER_HINT) from None

        found = model_file(Path(path))
        model = onnx.load(str(found))
        arrays = {tensor.name.removeprefix(PREFIX): numpy_helper.to_array(tensor)
                  for tensor in model.graph.initializer}
        hf_config = read_json(config_path(found))
        config = CONFIG_TABLE.to_model(hf_config, origin=str(config_path(found)),
                                       extra={"tie_output_head": "lm_head.weight" not in arrays})
        return Arrays({name: (lambda array=array: array.astype(np.float32))
                       for name, array in arrays.items()}), config

    def runtime_tolerance(self, path: Path) -> float | None:
        """An f16 graph computes in half precision: 1% of the logits' range."""
        return HALF_TOLERANCE if model_file(Path(path)).name == FILES["f16"] else None

    def runtime_logits(self, path: Path, ids: list[int]) -> np.ndarray:
        """The logits [T, V] onnxruntime computes for ``ids`` with the file's own graph, the
        prompt run with an empty past, as optimum and transformers.js run it first."""
        import onnxruntime

        found = model_file(Path(path))
        session = onnxruntime.InferenceSession(str(found), providers=["CPUExecutionProvider"])
        feeds = {"input_ids": np.array([ids], dtype=np.int64),
                 "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
                 "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
        for each in session.get_inputs():
            if each.name.startswith("past_key_values."):
                kind = np.float16 if "float16" in each.type else np.float32
                feeds[each.name] = np.zeros((1, each.shape[1], 0, each.shape[3]), dtype=kind)
        return session.run(["logits"], feeds)[0][0].astype(np.float32)
