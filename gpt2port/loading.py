"""A preset, Hub repo id, folder or file -> a ready ``GPTModel`` (``load_pretrained``) and its
tokenizer (``load_tokenizer``)."""

from __future__ import annotations

import os
import re
from difflib import get_close_matches
from pathlib import Path

import torch

from . import formats, slots
from .adapters.lora import BASE_HINT, LoraAdapter, is_adapter
from .config import PRESETS, hub_source
from .errors import (
    CheckpointError,
    ConfigError,
    DownloadError,
    MappingError,
    NetworkError,
    TokenizerError,
)
from .formats import Checkpoint
from .formats.table import MappingTable, to_model
from .io.pages import MappedFiles
from .io.rows import stacked_rows
from .model import GPTModel
from .skeleton import empty_model
from .text.encoders import Tokenizer, tokenizer_for
from .text.tokenizer import BUNDLED
from .text.vocabulary import Vocabulary, read_folder

REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
COMMIT = re.compile(r"[0-9a-f]{40}")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "f32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "f16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.float16``, ``"fp16"``, ``"bfloat16"``... -> a torch dtype (None stays None).

    Raises:
        ConfigError: for anything but fp32, fp16 and bf16 (by name or torch dtype).
    """
    if dtype is None or dtype in DTYPES.values():
        return dtype
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def parse_device(device: torch.device | str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``... checked against this torch build and
    machine.

    Raises:
        ConfigError: for a device torch does not know, gpt2port does not run on, or this
            machine does not have.
    """
    try:
        found = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {device!r}: not a device torch knows",
                          hint="use cpu, cuda, cuda:N or mps") from None
    if found.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r}: gpt2port runs on cpu, cuda or mps",
                          hint="use cpu")
    if found.type == "cuda" and not torch.cuda.is_available():
        build = "is a CPU-only build" if torch.version.cuda is None else "finds no GPU"
        raise ConfigError(f"device {device!r}: this torch ({torch.__version__}) {build}",
                          hint="install the CUDA build of torch (README: Running on a GPU), "
                          "or use cpu")
    if found.type == "cuda" and (found.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                          "CUDA device(s)", hint="use cuda (the first one)")
    if found.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS (Apple GPUs) is not available here",
                          hint="use cpu")
    return found


def checked_name(name_or_path: object, what: str = "name_or_path") -> str | Path:
    """A preset, Hub repo id or path given as text or a path.

    Raises:
        ConfigError: for anything else (None, a number, an empty text).
    """
    if isinstance(name_or_path, Path) or (isinstance(name_or_path, str) and name_or_path.strip()
                                          and "\0" not in name_or_path):
        return name_or_path
    if isinstance(name_or_path, os.PathLike):
        return Path(name_or_path)
    raise ConfigError(f"{what}: a preset, Hub repo id, folder or file is needed, got "
                      f"{name_or_path!r}", hint=f"presets: {', '.join(PRESETS)}")


def open_checkpoint(path: Path, *, base: str | Path | None = None,
                    cache_dir: str | Path | None = None, offline: bool = False) -> Checkpoint:
    """Read a folder or one weights file of any format in ``gpt2port.formats.FORMATS``, or a
    PEFT LoRA adapter with its base (``base``, else the one the adapter names: a preset, Hub
    repo id or path, fetched with ``cache_dir`` and ``offline``), merged when the model is
    made.

    Raises:
        CheckpointError: when no format recognises it, its files are malformed, or an adapter's
            base cannot be found.
        ConfigError: for a config this model cannot implement, an adapter gpt2port does not
            merge, or ``base`` given for a checkpoint that is not an adapter.
        MappingError: listing every adapter tensor that does not fit its base.
    """
    path = Path(path)
    if not is_adapter(path):
        if base is not None:
            raise ConfigError(f"{path}: a base (--base {base}) is for a LoRA adapter, and this "
                              "is a full checkpoint", hint="drop --base")
        return formats.read(path)
    adapter = LoraAdapter(path)
    name = base if base is not None else adapter.base_name
    if name is None:
        raise CheckpointError(f"{adapter.origin}: the adapter names no base model "
                              "(base_model_name_or_path is empty)", hint=BASE_HINT)
    try:
        base_path = resolve(name, cache_dir=cache_dir, offline=offline)
        found = formats.read(base_path)
    except (CheckpointError, DownloadError) as error:
        if isinstance(error, MappingError):
            raise
        raise type(error)(f"{adapter.origin}: its base {str(name)!r} cannot be loaded: "
                          f"{error.message}", hint=BASE_HINT) from None
    config = adapter.merged_config(found.config, adapter.origin)
    adapter.base_path = base_path
    return Checkpoint(adapter.origin, found.tensors, config, found.table, found.format,
                      found.path, lambda: read_folder(adapter.folder) or found.vocabulary,
                      adapter=adapter, base_config=found.config)


def _refuse_non_finite(origin: str, tensors: dict[str, torch.Tensor], table: MappingTable
                       ) -> None:
    """Raise CheckpointError naming every weight holding NaN or infinity.

    One float32 sum per tensor (~30 ms for 124M weights) finds them: NaN and infinity survive a
    sum; only a sum that overflows from finite values needs the exact, slower check.
    """
    problems, mapped = [], MappedFiles.now()
    for name, tensor in tensors.items():
        if table.is_ignored(name) or not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor.sum(dtype=torch.float32)) or bool(
            torch.isfinite(tensor).all())
        mapped.release(tensor)  # read again when used: the check holds no file in memory
        if finite:
            continue
        nan, infinite = int(tensor.isnan().sum()), int(tensor.isinf().sum())
        problems.append(f"{name!r} holds {nan} NaN and {infinite} infinite value(s)")
    if problems:
        raise CheckpointError(f"{origin}: weights that are not finite: " + "; ".join(problems),
                              hint="the checkpoint is damaged (or was saved after a diverged "
                              "training step); use another copy")


def _placed(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype
            ) -> torch.Tensor:
    """The tensor on ``device`` in ``dtype``; a memory-mapped view stays a view when nothing
    changes. A converted tensor is made row-major: half-precision matrix-vector kernels are
    up to 40x slower on a transposed (Conv1D [in, out]) layout, while an fp32 view keeps it
    (faster for fp32 there, and no copy)."""
    if _is_placed(tensor, device, dtype):
        return tensor
    return tensor.to(device=device, dtype=dtype, memory_format=torch.contiguous_format)


def _is_placed(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> bool:
    return tensor.dtype == dtype and tensor.device == torch.device(device)


def _placed_state(state: dict[str, torch.Tensor], device: torch.device | str,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor placed; each block's query, key and value tensors stay (or become) views of
    one tensor, so that decoding runs them as one product (``decoding.packed_projection``)."""
    placed, mapped = {}, MappedFiles.now()
    for names in _projection_groups(state):
        parts = tuple(state[name] for name in names)
        together = stacked_rows(parts)
        if together is None and _is_placed(parts[0], device, dtype):
            continue  # apart in the checkpoint, not converted: no copy just to pack them
        together = torch.cat(parts) if together is None else together
        placed.update(zip(names, _placed(together, device, dtype).split(parts[0].shape[0]),
                          strict=True))
        if not _is_placed(together, device, dtype):
            mapped.release(*parts)  # converted: the file's pages are not needed again
    for name, tensor in state.items():
        if name not in placed:
            placed[name] = _placed(tensor, device, dtype)
            if placed[name] is not tensor:
                mapped.release(tensor)
    return {name: placed[name] for name in state}


def _projection_groups(state: dict[str, torch.Tensor]) -> list[tuple[str, ...]]:
    """The names of each block's query, key and value weights, and of their biases
    (``slots.GROUPS``), where ``state`` has them."""
    groups = []
    for parts in slots.GROUPS.values():
        templates = [slots.BY_KEY[part].name for part in parts]
        layer = 0
        while templates[0].format(layer) in state:
            groups.append(tuple(template.format(layer) for template in templates))
            layer += 1
    return groups


def model_from_checkpoint(checkpoint: Checkpoint, *, dtype: torch.dtype | str | None = None,
                          device: torch.device | str = "cpu") -> GPTModel:
    """Build the model on the meta device and assign the checkpoint's tensors to it.

    ``dtype=None`` keeps the checkpoint's own floating-point type.

    Raises:
        MappingError: listing every tensor that does not fit.
        CheckpointError: for weights that are not finite.
        ConfigError: for an unknown dtype.
    """
    config, tensors = checkpoint.base_config or checkpoint.config, checkpoint.tensors
    blocks, layers = checkpoint.table.block_count(tensors), config["number_of_layers"]
    # a config claiming far more blocks than the file holds must not be mapped block by block
    checked = {**config, "number_of_layers": min(layers, blocks + 1)}
    try:
        state = to_model(checkpoint.table, tensors, checked, origin=checkpoint.origin)
    except MappingError as error:
        if blocks == layers:
            raise
        summary = f"the config gives {layers} layers, the checkpoint's tensors hold {blocks}"
        raise MappingError(checkpoint.origin, [summary, *error.problems], config) from None
    _refuse_non_finite(checkpoint.origin, tensors, checkpoint.table)
    dtype = parse_dtype(dtype) or state["token_embedding_table.weight"].dtype
    if checkpoint.adapter is not None:
        state = checkpoint.adapter.merged(state, config, checkpoint.config, dtype)
        config = checkpoint.config
    state = _placed_state(state, device, dtype)
    if config["tie_output_head"]:
        state["output_head.weight"] = state["token_embedding_table.weight"]
    model = empty_model(config)
    model.load_state_dict(state, assign=True)
    model.tie_output_head()
    return model.eval()


# files a user names by path: a name ending so is never taken for a Hub repo id
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".json", ".npz")


def hub_name(name: str) -> str:
    """``name`` when it can be a preset or Hub repo id.

    Raises:
        CheckpointError: for a path that does not exist (``./x``, ``/x``, ``model.pth``...) and for
            a close misspelling of a preset (``gpt-2``), with a suggestion.
    """
    if name in PRESETS:
        return name
    path = Path(name).expanduser()
    # REPO_ID already refuses "/x", "~/x", "a/b/c" and backslashes; the Hub also refuses these
    if (not REPO_ID.fullmatch(name) or name.startswith(".") or path.suffix in WEIGHTS_SUFFIXES
            or ".." in name or "--" in name or name.endswith((".", "-"))
            or any(len(part) > 96 for part in name.split("/"))):  # the Hub's longest name
        raise CheckpointError(f"{name}: no such file or folder", hint=_nearby(path))
    if "/" not in name:
        close = get_close_matches(name.lower(), PRESETS, n=1, cutoff=0.75)
        if close:
            raise CheckpointError(f"{name}: not a preset", hint=f"did you mean {close[0]}? "
                                  f"presets: {', '.join(PRESETS)}")
    return name


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; a name the system cannot even look up (too long, say) does not."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _nearby(path: Path) -> str:
    """What to do about a path that does not exist: similar names beside its first missing
    part."""
    missing = path.absolute()
    while not _exists(missing.parent) and missing.parent != missing.parent.parent:
        missing = missing.parent
    try:
        names = sorted(child.name for child in missing.parent.iterdir())
    except OSError:
        names = []
    close = get_close_matches(missing.name, names, n=3, cutoff=0.6)
    if close:
        return f"did you mean {' or '.join(str(missing.parent / c) for c in close)}?"
    if missing != path.absolute():
        return f"the folder {missing} does not exist"
    return (f"check the path; a preset ({', '.join(PRESETS)}) or a Hub repo id (owner/name) "
            "is fetched instead")


def resolve(name_or_path: str | Path, *, revision: str | None = None,
            cache_dir: str | Path | None = None, offline: bool = False,
            filename: str | None = None) -> Path:
    """A local path as is; a preset or Hub repo id -> its snapshot folder in the Hub cache (with
    ``filename``, that weights file of the repo).

    A preset pinned to a commit that is already cached resolves with no network request.

    Raises:
        ConfigError: for a ``filename`` with a local path, or a name that is not text or a path.
        CheckpointError: for a path that does not exist or a misspelt preset.
        DownloadError: when the Hub cannot be reached or refuses.
    """
    path = Path(checked_name(name_or_path))
    if _exists(path) or _exists(Path(f"{path}.index")):  # a TensorFlow checkpoint's prefix
        if filename is not None:
            raise ConfigError(f"{name_or_path}: a file name (--file {filename}) picks a file of "
                              "a Hub repo, and this is a local path",
                              hint=f"give the file's own path: {path / filename}")
        return path
    name = hub_name(str(name_or_path))
    from .hub import snapshots as hub  # imported here: a local load needs no network stack

    source = hub_source(name, revision)
    pinned = source.pinned if filename is None else {}  # a preset's hashes are of its own files
    where = {"revision": source.revision, "cache_dir": cache_dir, "filename": filename}
    if source.revision and COMMIT.fullmatch(source.revision):
        cached = hub.cached_snapshot(source.repo_id, **where)
        if cached is not None:
            return cached
    try:
        return hub.download(source.repo_id, pinned=pinned, offline=offline, **where)
    except NetworkError:
        cached = hub.cached_snapshot(source.repo_id, **where)
        if cached is None:
            raise
        return cached


def load_pretrained(name_or_path: str | Path, *, revision: str | None = None,
                    dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu",
                    cache_dir: str | Path | None = None, filename: str | None = None,
                    base: str | Path | None = None) -> GPTModel:
    """GPT-2 weights from a preset (``"gpt2"``), a Hub repo id, a folder or a file, in eval mode.
    A PEFT LoRA adapter (folder or Hub repo) loads as its base with the adapter merged: the base
    it names, or ``base`` (a preset, Hub repo id or path) where it was trained elsewhere.
    ``filename`` picks one weights file of a Hub repo (``rasbt/gpt2-from-scratch-pytorch``'s
    ``gpt2-small-124M.pth``), fetched with the config and tokenizer files beside it.

    Raises:
        CheckpointError: for files that are missing, malformed or do not fit the model.
        ConfigError: for a config.json this model cannot implement, or a dtype or device that
            is unknown or not on this machine.
        DownloadError: when the Hub cannot be reached or refuses.
    """
    parse_dtype(dtype)
    device = parse_device(device)
    folder = resolve(name_or_path, revision=revision, cache_dir=cache_dir, filename=filename)
    checkpoint = open_checkpoint(folder, base=base, cache_dir=cache_dir)
    return model_from_checkpoint(checkpoint, dtype=dtype, device=device)


def load_tokenizer(name_or_path: str | Path | Tokenizer | None = None, *,
                   revision: str | None = None, cache_dir: str | Path | None = None,
                   offline: bool = False) -> Tokenizer:
    """The tokenizer of a checkpoint or tokenizer folder, file (a GGUF's own, llm.c's), Hub repo
    (its tokenizer files alone) or preset (GPT-2's own, bundled; also the default), whatever
    its kind: GPT-2's byte-level BPE or another (``tokenizer.json`` of any model, WordPiece's
    ``vocab.txt``, SentencePiece's ``spiece.model``, a byte-level BPE of its own), with its added
    and special tokens. ``encode(text)`` gives the ids transformers' ``AutoTokenizer`` gives
    (``add_special_tokens=True`` adds what it wraps a text in), ``decode(ids)`` the text.

    Raises:
        TokenizerError: when there is no tokenizer there, its files disagree, or its kind
            needs a package that is not installed.
        CheckpointError: for a path that does not exist.
        DownloadError: when the Hub cannot be reached or refuses.
        ConfigError: for a name that is not text or a path.
    """
    if isinstance(name_or_path, Tokenizer):
        return name_or_path
    vocabulary, origin = given_vocabulary(name_or_path, revision=revision, cache_dir=cache_dir,
                                          offline=offline)
    return tokenizer_for(vocabulary, origin)


def given_vocabulary(name_or_path: str | Path | Tokenizer | None, *,
                     revision: str | None = None, cache_dir: str | Path | None = None,
                     offline: bool = False) -> tuple[Vocabulary, str]:
    """The tokenizer a user names (``--tokenizer``, ``tokenizer=``), as ``load_tokenizer``
    finds it, and where it came from.

    Raises:
        As ``load_tokenizer``.
    """
    if isinstance(name_or_path, Tokenizer):
        return name_or_path.vocabulary, "the given tokenizer"
    if name_or_path is None or checked_name(name_or_path, "tokenizer") in PRESETS:
        return read_folder(BUNDLED), "GPT-2's tokenizer"
    path = Path(name_or_path)
    if not _exists(path):
        from .hub import snapshots as hub  # imported here: a local load needs no network stack

        path = hub.download_tokenizer(hub_name(str(name_or_path)), revision=revision,
                                      cache_dir=cache_dir, offline=offline)
    vocabulary = read_vocabulary(path)
    if vocabulary is None:
        raise TokenizerError(f"{name_or_path}: no tokenizer files (tokenizer.json, vocab.json + "
                             "merges.txt, encoder.json + vocab.bpe, vocab.txt or spiece.model)",
                             hint="name the model's own tokenizer folder or Hub repo, or gpt2 "
                             "for GPT-2's")
    return vocabulary, str(name_or_path)


GPT2_VOCABULARY = 50257  # GPT-2's tokens: a checkpoint of this vocabulary saved without its
# tokenizer is taken to use GPT-2's


def checkpoint_tokenizer(checkpoint: Checkpoint, *, tokenizer: str | Path | Tokenizer | None = None,
                         cache_dir: str | Path | None = None, offline: bool = False
                         ) -> Tokenizer | None:
    """What turns text into the checkpoint's ids: ``tokenizer`` where given (as
    ``load_tokenizer`` takes it), else the checkpoint's own, else GPT-2's where its vocabulary
    is GPT-2's (saved without its tokenizer, as ``save_pretrained`` alone does); None when there
    is none (``cache_dir``, ``offline``: where a named Hub repo's tokenizer is fetched).

    Raises:
        TokenizerError: for a tokenizer with more tokens than the model has rows (not this
            model's), or one that cannot be read.
    """
    config = checkpoint.config
    if tokenizer is not None:
        found = load_tokenizer(tokenizer, cache_dir=cache_dir, offline=offline)
    elif checkpoint.vocabulary is not None:
        found = tokenizer_for(checkpoint.vocabulary, checkpoint.origin)
    elif config["vocab_size"] == GPT2_VOCABULARY:
        found = load_tokenizer()
    else:
        return None
    if found.n_vocab > config["padded_vocab_size"]:
        raise TokenizerError(f"{checkpoint.origin}: the tokenizer has {found.n_vocab} tokens and "
                             f"the model {config['padded_vocab_size']} rows: it is not this "
                             "model's tokenizer", hint="pass the model's own tokenizer "
                             "(--tokenizer PATH|REPO, tokenizer=)")
    return found


def read_vocabulary(path: Path) -> Vocabulary | None:
    """The tokenizer of the checkpoint at ``path``: its format's own (inside a GGUF, llm.c's
    ``gpt2_tokenizer.bin``), else the files in its folder.

    Raises:
        TokenizerError: when the files cannot be read or disagree.
    """

    try:
        found = formats.recognise(Path(path))
    except CheckpointError:
        return read_folder(path if path.is_dir() else path.parent)
    return found.read_vocabulary(Path(path))
