"""OpenAI's original GPT-2 release: a TensorFlow checkpoint (``model.ckpt.*``) and ``hparams.json``.

Weights are Conv1D [1, in, out] with a leading axis of 1; ``c_attn`` packs q|k|v; the output head
is the token embedding (there is no separate tensor). Read and written by ``tensor_bundle``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from ..config import GPT2_VARIANT
from ..errors import CheckpointError, VerificationError, unreadable
from ..io.arrays import Arrays
from ..io.readers import read_json
from ..io.tensor_bundle import read_bundle, write_bundle
from ..text.tokenizer import FILE_NAMES, write_bpe
from ..text.vocabulary import Vocabulary
from .base import Candidate, ConfigKey, ConfigTable, Format, Raw, later
from .table import MappingTable

PREFIX = "model.ckpt"
CHECKPOINT_STATE = "checkpoint"  # TensorFlow's note of the latest step of a run
TOKENIZER_FILES = FILE_NAMES[1]  # encoder.json, vocab.bpe: Hugging Face's vocab.json, merges.txt
# The files of a release in OpenAI's storage that loading needs, in the order they are fetched
# (model.ckpt.meta, TF's graph definition, is left out: no reader here needs it).
RELEASE_FILES = ("checkpoint", "encoder.json", "hparams.json", "vocab.bpe",
                 f"{PREFIX}.index", f"{PREFIX}.data-00000-of-00001")
SIZES = ("124M", "355M", "774M", "1558M")
PRESET_SIZES = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}

TABLE = MappingTable.parse("openai", """
    token_embedding_table.weight        model/wte
    position_embedding_table.weight     model/wpe
    attention_norm.scale                model/h{}/ln_1/g
    attention_norm.shift                model/h{}/ln_1/b
    attention.qkv.weight                model/h{}/attn/c_attn/w    squeeze, transpose, split
    attention.qkv.bias                  model/h{}/attn/c_attn/b    split
    attention.output_projection.weight  model/h{}/attn/c_proj/w    squeeze, transpose
    attention.output_projection.bias    model/h{}/attn/c_proj/b
    feed_forward_norm.scale             model/h{}/ln_2/g
    feed_forward_norm.shift             model/h{}/ln_2/b
    feed_forward.expansion.weight       model/h{}/mlp/c_fc/w       squeeze, transpose
    feed_forward.expansion.bias         model/h{}/mlp/c_fc/b
    feed_forward.contraction.weight     model/h{}/mlp/c_proj/w     squeeze, transpose
    feed_forward.contraction.bias       model/h{}/mlp/c_proj/b
    layer_norm.scale                    model/ln_f/g
    layer_norm.shift                    model/ln_f/b
    """)
# hparams.json key <-> model config key (all required)
CONFIG_TABLE = ConfigTable((
    ConfigKey("n_vocab", "vocab_size"),
    ConfigKey("n_ctx", "context_length"),
    ConfigKey("n_embd", "embedding_dimension"),
    ConfigKey("n_head", "number_of_heads"),
    ConfigKey("n_layer", "number_of_layers"),
), assumes={**GPT2_VARIANT, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-5,
            "qkv_bias": True, "bias": True, "gelu_approximation": "tanh"})
HINT = "hparams.json needs " + ", ".join(key.theirs for key in CONFIG_TABLE.keys)


def config_from_hparams(hparams: dict, *, origin: str) -> dict:
    """An ``hparams.json`` dict -> the model config (the head is the token embedding).

    Raises:
        ConfigError: naming the keys that are missing or cannot work.
    """
    return CONFIG_TABLE.to_model(hparams, origin=origin, hint=HINT,
                                 extra={"tie_output_head": True})


def bundle_prefix(path: Path) -> Path | None:
    """The checkpoint ``path`` means, beside an ``hparams.json``: the prefix itself
    (``checkpoint/run1/model-500``); in a folder the one its ``checkpoint`` file names (as
    TensorFlow's ``Saver`` and gpt-2-simple write it), else ``model.ckpt`` (OpenAI's release),
    else its only ``*.index``. None: not this format.

    Raises:
        CheckpointError: for a ``checkpoint`` file naming a step that is not there, or several
            steps and nothing naming one.
    """
    path = Path(path)
    if Path(f"{path}.index").is_file() and (path.parent / "hparams.json").is_file():
        return path
    if not (path.is_dir() and (path / "hparams.json").is_file()):
        return None
    named = _named_by_state_file(path)
    if named is not None:
        return named
    if (path / f"{PREFIX}.index").is_file():
        return path / PREFIX
    steps = sorted((index.with_suffix("") for index in path.glob("*.index")), key=_step)
    if len(steps) > 1:
        raise CheckpointError(f"{path}: {len(steps)} checkpoints ("
                              + ", ".join(step.name for step in steps)
                              + ") and no checkpoint file naming one",
                              hint=f"name the one to load, e.g. {steps[-1]}")
    return steps[0] if steps else None


def _named_by_state_file(folder: Path) -> Path | None:
    """The prefix the folder's ``checkpoint`` file names (``model_checkpoint_path: "..."``),
    taken beside the file when the path it gives is elsewhere (a run copied from another
    machine)."""
    state = folder / CHECKPOINT_STATE
    if not state.is_file():
        return None
    try:
        text = state.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise unreadable(state, error) from None
    found = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', text, re.MULTILINE)
    if found is None:
        return None
    named = Path(found[1])
    for prefix in (folder / named, folder / named.name):
        if Path(f"{prefix}.index").is_file():
            return prefix
    raise CheckpointError(f"{state}: names {found[1]}, but {folder / named.name}.index is not "
                          "there", hint="copy that step's .index and .data files beside it, or "
                          "name another step: FOLDER/model-STEP")


def _step(prefix: Path) -> tuple[int, str]:
    """``model-1000`` sorts after ``model-500``."""
    number = re.search(r"(\d+)$", prefix.name)
    return (int(number[1]) if number else -1, prefix.name)


# TensorFlow's own reading of a checkpoint, in a child process (its threads, logs and flags stay
# there): every variable as float32, into an .npz
TENSORFLOW_READER = r"""
import sys, zipfile, numpy
import tensorflow as tf
reader = tf.train.load_checkpoint(sys.argv[1])
names = sorted(reader.get_variable_to_shape_map())
with zipfile.ZipFile(sys.argv[2], "w") as archive:  # an .npz written one tensor at a time
    for i, name in enumerate(names):
        with archive.open(f"t{i}.npy", "w", force_zip64=True) as member:
            numpy.lib.format.write_array(member, reader.get_tensor(name).astype("float32"))
print("\n".join(names))
"""


def tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def bundle_arrays(prefix: Path) -> dict[str, Callable[[], np.ndarray]]:
    """Makers of the checkpoint's tensors as float32 arrays: read by TensorFlow where it is
    installed (sharing no code with the loader's ``tensor_bundle``; the child writes them one at
    a time, each read back when its maker is called), else by ``tensor_bundle``.

    Raises:
        VerificationError: when TensorFlow cannot read the checkpoint.
    """
    if not tensorflow_installed():
        return {name: later(tensor) for name, tensor in read_bundle(prefix).items()}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as work:
        output = Path(work) / "tensors.npz"
        done = subprocess.run([sys.executable, "-c", TENSORFLOW_READER, str(prefix), str(output)],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if done.returncode != 0 or not output.is_file():
            said = (done.stderr.strip().splitlines() or ["it printed nothing"])[-1]
            raise VerificationError(f"{prefix}: TensorFlow could not read the checkpoint "
                                    f"({said})", hint="check the files (or the TensorFlow "
                                    "install); gpt2port verify reads them without TensorFlow "
                                    "once it is uninstalled")
        names = done.stdout.split()
        found = np.load(output)  # read member by member; the open file outlives the folder
        return {name: (lambda key=f"t{i}": found[key]) for i, name in enumerate(names)}


class OpenAI(Format):
    name = "openai"
    name_table = TABLE
    config_table = CONFIG_TABLE
    config_hint = HINT
    title = "OpenAI's TF checkpoint"
    summary = ("`hparams.json`, `checkpoint`, `model.ckpt.index` + `.data-00000-of-00001` (or a "
               "training run's `model-STEP.*`)")
    dtypes = ("f32", "f16", "bf16")
    head = "tied"
    vocabulary = "rows"
    cannot_represent = ("an untied head, an epsilon other than 1e-5 (refused); the exact GELU "
                        "(refused unless approximated); no biases (zeros: exact)")
    proof = "TensorFlow's `tf.train.load_checkpoint` reads the export; every tensor equal"
    tokenizer = ("`encoder.json` + `vocab.bpe`, added tokens in `encoder.json` (which of them are "
                 "special is not kept: stated)")

    def recognises(self, candidate: Candidate) -> bool:
        return bundle_prefix(candidate.path) is not None

    def read_raw(self, candidate: Candidate) -> Raw:
        """Tensors (CRC-checked, memory-mapped) and the hparams of a release or training run."""
        prefix = bundle_prefix(candidate.path)
        hparams = prefix.parent / "hparams.json"
        return Raw(str(prefix), read_bundle(prefix), read_json(hparams), config_origin=str(hparams))

    def write_raw(self, destination: Path, tensors, config: dict, *, dtype: str | None,
                  vocabulary: Vocabulary | None) -> None:
        """``hparams.json``, ``checkpoint`` and the ``model.ckpt`` bundle, as OpenAI released."""
        hparams = CONFIG_TABLE.from_model({**config, "vocab_size": config["padded_vocab_size"]})
        (destination / "hparams.json").write_text(json.dumps(hparams, indent=2))
        (destination / CHECKPOINT_STATE).write_text(f'model_checkpoint_path: "{PREFIX}"\n'
                                                f'all_model_checkpoint_paths: "{PREFIX}"\n')
        write_bundle(destination / PREFIX, tensors)

    def keeps_tokenizer(self, vocabulary: Vocabulary) -> bool:
        """OpenAI's encoder.py runs a byte-level BPE only."""
        return vocabulary.kind == "bpe"

    def tokenizer_losses(self, vocabulary: Vocabulary) -> list[str]:
        special = [vocabulary.tokens[i] for i in vocabulary.extra if i in vocabulary.special]
        return [f"encoder.json keeps {', '.join(special)} as added tokens, not marked special"
                ] if special else []

    def write_tokenizer(self, vocabulary: Vocabulary, folder: Path, config: dict) -> None:
        """``encoder.json`` (every token, added ones too) and ``vocab.bpe``, as OpenAI's
        ``encoder.py`` reads them."""
        write_bpe({token: i for i, token in enumerate(vocabulary.tokens)},
                  list(vocabulary.merges), folder, TOKENIZER_FILES)

    @property
    def reference_reads_with(self) -> str:
        return ("TensorFlow (tf.train.load_checkpoint, in a child process)"
                if tensorflow_installed() else
                "gpt2port's tensor-bundle reader, the loader's own: TensorFlow is not installed")

    def reference_tensors(self, path: Path) -> tuple[Arrays, dict]:
        """``model/h0/ln_1/g`` [1, D]... as ``h.0.ln_1.weight`` [D], as picoGPT reads them; the
        tensors read by TensorFlow where it is installed (``bundle_arrays``)."""
        prefix = bundle_prefix(Path(path))
        arrays = {}
        for name, make in bundle_arrays(prefix).items():
            name = re.sub(r"^h(\d+)/", r"h.\1/", name.removeprefix("model/"))  # h.0/ln_1/g
            name = re.sub(r"/[wg]$", "/weight", re.sub(r"/b$", "/bias", name)).replace("/", ".")
            name = name if name.endswith(("weight", "bias")) else f"{name}.weight"  # wte, wpe
            arrays[name] = partial(_without_conv1d_axis, make)
        hparams = prefix.parent / "hparams.json"
        return Arrays(arrays), config_from_hparams(read_json(hparams), origin=str(hparams))


def _without_conv1d_axis(make) -> np.ndarray:
    """A tensor without Conv1D's leading axis of 1 ([1, D, 3D] -> [D, 3D])."""
    array = make()
    return array[0] if array.ndim == 3 else array
