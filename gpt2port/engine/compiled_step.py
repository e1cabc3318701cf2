"""A decoding step compiled for this machine: ``csrc/step.c``, built on first use with the
machine's C compiler, cached on disk, loaded through ctypes.

The step runs whole tokens (embeddings, every block, the output head) in one call, with no
per-operation dispatch: one token of every sequence of a batch, or a short prompt's tokens,
each weight read once for all of them. On the CPU at batch 1 the dispatch, not the products,
is what an eager step spends beyond its weights' memory traffic (docs/benchmarks.md). It reads
the model's own tensors where they are (no copy of a weight; fp32 copies of the norms and
biases, a few hundred KB), writes the decoder's own KV cache, and keeps its activations in fp32.

Built once per machine and source: ``$XDG_CACHE_HOME/gpt2port`` (else ``~/.cache/gpt2port``),
named by a hash of the source, the compiler, its flags and the CPU, written under a temporary
name and renamed into place.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch import nn

from ..errors import CompileError, ConfigError
from ..model import FeedForward, GPTModel, LayerNorm, MultiHeadAttention, TransformerBlock

SOURCE = Path(__file__).parent / "csrc" / "step.c"
# tried in order: the CPU's own instructions and OpenMP threads, then less
FLAG_SETS = (("-O3", "-march=native", "-fopenmp"), ("-O3", "-fopenmp"), ("-O3",))
KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
GELUS = {"tanh": 0, "none": 1}
FP32_BATCH_LIMIT = 16  # measured: 190 vs 150 tok/s at 16 rows, 195 vs 235 at 32 (benchmarks.md)
PROMPT_ROWS = FP32_BATCH_LIMIT  # the most prompt tokens (all sequences) it runs in one call
PARTIAL_GAP = 16  # floats after each row's partial sums (step.c says why)
HINT = "token ids are 0 to the model's vocab_size - 1, positions within its context"


class Product(ctypes.Structure):
    _fields_ = [("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("rows", ctypes.c_int64), ("cols", ctypes.c_int64),
                ("transposed", ctypes.c_int64), ("stride", ctypes.c_int64)]


class Norm(ctypes.Structure):
    _fields_ = [("scale", ctypes.c_void_p), ("shift", ctypes.c_void_p)]


class Block(ctypes.Structure):
    _fields_ = [("attention_norm", Norm), ("feed_forward_norm", Norm),
                *((name, Product) for name in ("query", "key", "value", "output", "expansion",
                                               "contraction"))]


class Model(ctypes.Structure):
    _fields_ = [*((name, ctypes.c_int64) for name in ("width", "heads", "layers", "capacity",
                                                      "kind", "exact_gelu")),
                ("epsilon", ctypes.c_double),
                ("token_table", ctypes.c_void_p), ("position_table", ctypes.c_void_p),
                ("blocks", ctypes.POINTER(Block)), ("final_norm", Norm), ("head", Product),
                ("keys", ctypes.c_void_p), ("values", ctypes.c_void_p),
                ("scratch", ctypes.c_void_p), ("logits", ctypes.c_void_p),
                ("partials", ctypes.c_void_p), ("threads", ctypes.c_int64),
                ("partial_size", ctypes.c_int64), ("token_rows", ctypes.c_int64),
                ("position_rows", ctypes.c_int64), ("sequences", ctypes.c_int64),
                ("most_rows", ctypes.c_int64)]


class Rows(ctypes.Structure):
    _fields_ = [("tokens", ctypes.c_void_p), ("positions", ctypes.c_void_p),
                ("sequences", ctypes.c_void_p), ("slots", ctypes.c_void_p),
                ("count", ctypes.c_int64), ("padding", ctypes.c_void_p),
                ("padding_stride", ctypes.c_int64), ("logit_rows", ctypes.c_void_p),
                ("logit_count", ctypes.c_int64)]


STRUCTS = (Product, Norm, Block, Model, Rows)  # the order gpt2port_struct_sizes gives them in
STEP_PROBLEMS = {1: "a token is outside the embedding table",
                 2: "a position, slot or row is outside the position table, the cache or the "
                    "step"}


def cache_folder() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gpt2port"


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which(
        "clang")


@cache
def cpu_identity() -> str:
    """What the built code depends on: the CPU's model and its instruction set flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags",
                                                                       "Features"))]
        return "\n".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor()


@cache
def version_of(compiler_path: str) -> str:
    return subprocess.run([compiler_path, "--version"], capture_output=True, text=True,
                          check=False).stdout


def library_path(compiler_path: str, flags: tuple[str, ...]) -> Path:
    """Where the step built by this compiler with these flags is kept."""
    version = version_of(compiler_path)
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler_path, version, *flags,
                                    platform.machine(), cpu_identity()]).encode()).hexdigest()
    return cache_folder() / f"step-{key[:20]}.so"


def build(compiler_path: str, flags: tuple[str, ...], path: Path) -> str | None:
    """Compile the step to ``path`` (renamed into place when done); the compiler's message
    where it fails, else None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".building-") as folder:
        built = Path(folder) / path.name
        try:
            result = subprocess.run([compiler_path, *flags, "-shared", "-fPIC", str(SOURCE),
                                     "-lm", "-o", str(built)], capture_output=True, text=True,
                                    check=False)
        except OSError as error:
            return f"{compiler_path} could not be run ({error.strerror or error})"
        if result.returncode != 0:
            said = [line for line in (result.stderr or result.stdout).splitlines()
                    if line.strip()]
            errors = [line for line in said if "error" in line.lower()] or said
            return errors[0].strip() if errors else f"exit code {result.returncode}"
        os.replace(built, path)
    return None


@cache
def library() -> ctypes.CDLL:
    """The step's shared library, built on first use with the first flag set that compiles."""
    found = compiler()
    if found is None:
        raise CompileError("no C compiler found (looked for $CC, cc, gcc and clang) to build "
                           "the compiled decoding step")
    said = None
    for flags in FLAG_SETS:
        path = library_path(found, flags)
        if not path.exists():
            said = build(found, flags, path)
            if said is not None:
                continue
        try:
            step = ctypes.CDLL(str(path))
            step.gpt2port_step.argtypes = [ctypes.POINTER(Model), ctypes.POINTER(Rows)]
            step.gpt2port_step.restype = ctypes.c_int64
            step.gpt2port_max_threads.restype = ctypes.c_int64
            step.gpt2port_struct_sizes.argtypes = [ctypes.POINTER(ctypes.c_int64 * len(STRUCTS))]
            step.gpt2port_struct_sizes.restype = None
        except (OSError, AttributeError) as error:
            raise CompileError(f"{path}: cannot load the compiled step ({error})",
                               hint="delete that file to rebuild it, or leave compile off"
                               ) from None
        _check_struct_sizes(step, path)
        return step
    raise CompileError(f"{found} could not compile {SOURCE}: {said}",
                       hint="check that it is a working C compiler (CC= names another), or "
                       "leave compile off")


def _check_struct_sizes(step: ctypes.CDLL, path: Path) -> None:
    """Refuse a library whose structs are not laid out as the ctypes ones here.

    Raises:
        CompileError: naming the structs whose sizes differ.
    """
    sizes = (ctypes.c_int64 * len(STRUCTS))()
    step.gpt2port_struct_sizes(ctypes.byref(sizes))
    differ = [f"{struct.__name__} {size} bytes in C, {ctypes.sizeof(struct)} here"
              for struct, size in zip(STRUCTS, sizes, strict=True)
              if size != ctypes.sizeof(struct)]
    if differ:
        raise CompileError(f"{path}: the compiled step's structs do not match gpt2port's ("
                           + "; ".join(differ) + ")",
                           hint="delete that file to rebuild it, or leave compile off")


def unsupported(model: GPTModel) -> str | None:
    """Why this model's one-token steps cannot run compiled (None: they can)."""
    weight = model.token_embedding_table.weight
    if weight.device.type != "cpu":
        return f"it runs on the CPU; the model is on {weight.device}"
    if model.training:
        return "it runs in eval mode (no dropout); the model is in training mode"
    if weight.dtype not in KINDS:
        return f"it runs fp32, fp16 or bf16 weights; the model is {weight.dtype}"
    config = model.config
    if config["activation"] != "gelu" or config["gelu_approximation"] not in GELUS:
        return f"it runs GPT-2's GELU; the model's feed-forward runs {config['activation']!r}"
    if not config["attention_scaled_by_head_width"] or config["attention_scaled_by_layer"]:
        return ("it scales attention by 1/sqrt(head width) alone; the model's "
                "attention_scaled_by_head_width / attention_scaled_by_layer differ")
    plain = {"token_embedding_table": nn.Embedding, "position_embedding_table": nn.Embedding,
             "layer_norm": LayerNorm, "output_head": nn.Linear}
    for name, kind in plain.items():
        if type(getattr(model, name)) is not kind:
            return f"it runs GPT-2's own layers; model.{name} is a {type(getattr(model, name))}"
    for index, block in enumerate(model.transformer_blocks):
        parts = {"": (block, TransformerBlock), "attention": (block.attention, MultiHeadAttention),
                 "feed_forward": (block.feed_forward, FeedForward),
                 "attention_norm": (block.attention_norm, LayerNorm),
                 "feed_forward_norm": (block.feed_forward_norm, LayerNorm)}
        replaced = f"it runs GPT-2's own layers; block {index} has replaced ones"
        if any(type(module) is not kind for module, kind in parts.values()):
            return replaced
        linears = [block.attention.query_projection, block.attention.key_projection,
                   block.attention.value_projection, block.attention.output_projection,
                   block.feed_forward.expansion, block.feed_forward.contraction]
        if (any(type(layer) is not nn.Linear for layer in linears)
                or type(block.feed_forward.activation) is not nn.GELU):
            return replaced
    modules = list(model.modules())
    if any(module._forward_hooks or module._forward_pre_hooks for module in modules):
        return "it runs GPT-2's own layers; the model has forward hooks"
    if any(layout(parameter) is None for parameter in model.parameters()) or any(
            layout(table.weight) != (0, table.weight.shape[1])
            for table in (model.token_embedding_table, model.position_embedding_table)):
        return "it reads row-major weights or their transposes; the model has other strides"
    if len({parameter.dtype for parameter in model.parameters()}) > 1:
        return "it runs one dtype; the model's parameters mix dtypes"
    return None


class Unchanged:
    """What the step's pointers were taken from: which module sits in each place, which memory
    each parameter holds, and that no module trains or has hooks. ``__call__`` says whether the
    model still is so (about 60 microseconds for 124M: plain dict lookups, no module walk)."""

    def __init__(self, model: GPTModel):
        modules = list(model.modules())
        self.modules = modules
        self.places = [(module._modules, name, child) for module in modules
                       for name, child in module._modules.items()]
        self.memory = [(module._parameters, name, _address(parameter))
                       for module in modules for name, parameter in module._parameters.items()]

    def __call__(self) -> bool:
        return (all(held.get(name) is child for held, name, child in self.places)
                and all(_address(held.get(name)) == address
                        for held, name, address in self.memory)
                and not any(module.training or module._forward_hooks
                            or module._forward_pre_hooks for module in self.modules))


def _address(parameter: torch.Tensor | None) -> tuple | None:
    return None if parameter is None else (parameter.data_ptr(), parameter.dtype)


def _cache_problem(model: GPTModel, keys: torch.Tensor, values: torch.Tensor) -> str | None:
    """Why the KV cache cannot be written by the step (None: it can)."""
    config = model.config
    heads = config["number_of_heads"]
    for name, tensor in (("keys", keys), ("values", values)):
        if (tensor.dtype != torch.float32 or tensor.device.type != "cpu"
                or not tensor.is_contiguous() or tensor.dim() != 5
                or tensor.shape[0] != config["number_of_layers"] or tensor.shape[2] != heads
                or tensor.shape[4] * heads != config["embedding_dimension"]):
            return (f"it writes an fp32, contiguous CPU cache of (layers, batch, heads, "
                    f"capacity, head width); the {name} are {tensor.dtype} "
                    f"{list(tensor.shape)} on {tensor.device}")
    if keys.shape != values.shape:
        return "its keys and values caches differ in shape"
    return None


def layout(tensor: torch.Tensor) -> tuple[int, int] | None:
    """(0, stride) where a 2-d tensor's rows are contiguous, (1, stride) where its columns are
    (the stride from one to the next, in elements), else None; a 1-d tensor must be contiguous.
    """
    if tensor.dim() == 1:
        return (0, 1) if tensor.stride(0) == 1 or tensor.numel() == 1 else None
    (rows, cols), (down, across) = tensor.shape, tensor.stride()
    if across == 1 and down >= cols:
        return 0, down
    if down == 1 and across >= rows:
        return 1, across
    return None


def faster_elsewhere(model: GPTModel, batch: int) -> bool:
    """Whether the regular step is the faster: fp32 batches of more than FP32_BATCH_LIMIT rows,
    whose products MKL's matrix-matrix kernel computes faster than the step's (it reads each
    weight once for the batch either way; half precision has no such kernel in torch)."""
    return model.output_head.weight.dtype == torch.float32 and batch > FP32_BATCH_LIMIT


def compiled_step(model: GPTModel, keys: torch.Tensor, values: torch.Tensor,
                  packed: list, *, required: bool) -> CompiledStep | None:
    """The compiled step for a decoder's cache; where it does not apply (the model or cache it
    cannot run, no C compiler) or is not the faster (``faster_elsewhere``) None, unless
    ``required``.

    Raises:
        ConfigError, CompileError: where ``required`` and it cannot be made.
    """
    if not required and (unsupported(model) or _cache_problem(model, keys, values)
                         or faster_elsewhere(model, keys.shape[1])):
        return None
    try:
        return CompiledStep(model, keys, values, packed)
    except CompileError:
        if required:
            raise
        return None


class CompiledStep:
    """A decoder's steps on the CPU by the compiled step: one token of every sequence of its
    cache at once, or a short prompt of each (up to ``most_rows`` tokens in all). Holds the fp32
    norms and biases it made and every tensor the C structs point at."""

    def __init__(self, model: GPTModel, keys: torch.Tensor, values: torch.Tensor,
                 packed: list[tuple[torch.Tensor, torch.Tensor | None] | None]):
        reason = unsupported(model) or _cache_problem(model, keys, values)
        if reason is not None:
            raise ConfigError(f"compile: {reason}",
                              hint="leave compile off for this model (generation still works)")
        self.library = library()
        self.unchanged, self.vocabulary = Unchanged(model), model.config["vocab_size"]
        config = model.config
        self.held: list[torch.Tensor] = [keys, values]
        blocks = model.transformer_blocks
        self.blocks = (Block * len(blocks))(*map(self.block, blocks, packed))
        head = model.output_head
        head_product = self.product(head.weight, head.bias)
        sequences, capacity, width = keys.shape[1], keys.shape[3], config["embedding_dimension"]
        self.most_rows = max(sequences, PROMPT_ROWS)
        self.logits = torch.empty(self.most_rows, head.weight.shape[0])
        scratch = 6 * width + blocks[0].feed_forward.expansion.weight.shape[0]
        scratch += config["number_of_heads"] * capacity
        self.scratch = torch.empty(self.most_rows, scratch)  # per row: x, ..., scores
        threads = max(self.library.gpt2port_max_threads(), os.cpu_count() or 1)
        products = [getattr(block, name) for block in self.blocks
                    for name, _ in Block._fields_[2:]] + [head_product]
        partial_size = PARTIAL_GAP + max(  # the sums of a transposed product's outputs
            (product.rows for product in products if product.transposed), default=0)
        self.partials = torch.empty(threads, self.most_rows, partial_size)
        self.model = Model(
            width=width, heads=config["number_of_heads"], layers=len(blocks), capacity=capacity,
            kind=KINDS[head.weight.dtype], exact_gelu=GELUS[config["gelu_approximation"]],
            epsilon=config["layer_norm_epsilon"],
            token_table=self.pointer(model.token_embedding_table.weight),
            position_table=self.pointer(model.position_embedding_table.weight),
            blocks=self.blocks, final_norm=self.norm(model.layer_norm), head=head_product,
            keys=self.pointer(keys), values=self.pointer(values),
            scratch=self.pointer(self.scratch), logits=self.pointer(self.logits),
            partials=self.pointer(self.partials), threads=threads, partial_size=partial_size,
            token_rows=model.token_embedding_table.weight.shape[0],
            position_rows=model.position_embedding_table.weight.shape[0], sequences=sequences,
            most_rows=self.most_rows)
        self.dtype, self.capacity, self.sequences = head.weight.dtype, capacity, sequences

    def runs(self, token_ids: torch.Tensor) -> bool:
        """Whether it takes these (B, T) tokens in one call: a step of every sequence, or a
        prompt of at most PROMPT_ROWS tokens in all (longer fp32 prompts run faster by the
        regular step's matrix products, and the step's attention is made for few queries)."""
        rows = token_ids.numel()
        return rows <= self.most_rows and (token_ids.shape[1] == 1 or rows <= PROMPT_ROWS)

    def __call__(self, token_ids: torch.Tensor, start: int, padding: torch.Tensor | None = None,
                 *, last_only: bool = True) -> torch.Tensor:
        """The logits (B, T, V), or (B, 1, V) for each sequence's last token only, after
        ``token_ids`` (B, T) at cache slots ``start`` on, their keys and values cached.
        ``padding`` (B, start + T), 1 for tokens and 0 for left padding, sets each token's
        position (the tokens before it) and the keys it sees; None: every slot holds a token.

        Raises:
            ConfigError: for a token outside the vocabulary, a position outside the cache, more
                tokens than the step holds, or a model changed since this step was made (a
                layer replaced, a tensor moved).
        """
        batch, tokens = token_ids.shape
        if batch != self.sequences or not self.runs(token_ids):
            raise ConfigError(f"compile: {batch} x {tokens} token(s) for a step of "
                              f"{self.sequences} sequence(s) and at most {self.most_rows} "
                              "tokens", hint=HINT)
        ids = token_ids.to(torch.int64).reshape(-1).contiguous()  # row b * T + t
        outside = ids[(ids < 0) | (ids >= self.vocabulary)]
        if outside.numel():
            raise ConfigError(f"compile: token id {int(outside[0])} is outside the model's "
                              f"vocabulary (0 to {self.vocabulary - 1})", hint=HINT)
        if not 0 <= start <= self.capacity - tokens:
            raise ConfigError(f"compile: position {start + tokens - 1} is outside the cache (0 "
                              f"to {self.capacity - 1})", hint=HINT)
        slots = torch.arange(start, start + tokens).repeat(batch)
        if padding is None:
            positions = slots
        else:
            padding = padding.to(torch.int64).contiguous()
            if tuple(padding.shape) != (batch, start + tokens):
                raise ConfigError(f"compile: a padding mask of {list(padding.shape)} for "
                                  f"{batch} sequence(s) of {start + tokens} token(s)", hint=HINT)
            # as the regular step numbers them: the real tokens before, padding at 0
            positions = (padding.cumsum(1) - 1).clamp(min=0)[:, start:].reshape(-1).contiguous()
        sequences = torch.arange(batch).repeat_interleave(tokens)
        logit_rows = torch.arange(tokens - 1 if last_only else 0, batch * tokens,
                                  tokens if last_only else 1)
        if not self.unchanged():
            raise ConfigError("compile: the model changed while it was generating (a layer "
                              "replaced, a tensor moved or retyped, a hook added)",
                              hint="start a new generation after changing the model")
        rows = Rows(ids.data_ptr(), positions.data_ptr(), sequences.data_ptr(), slots.data_ptr(),
                    batch * tokens, None if padding is None else padding.data_ptr(),
                    start + tokens, logit_rows.data_ptr(), logit_rows.numel())
        status = self.library.gpt2port_step(ctypes.byref(self.model), ctypes.byref(rows))
        if status != 0:
            raise ConfigError(f"compile: {STEP_PROBLEMS.get(status, f'status {status}')} "
                              f"(tokens {ids.tolist()}, from slot {start})", hint=HINT)
        logits = self.logits[:logit_rows.numel()].to(self.dtype, copy=True)
        return logits.view(batch, 1 if last_only else tokens, -1)

    def pointer(self, tensor: torch.Tensor | None, *, fp32: bool = False) -> int | None:
        if tensor is None:
            return None
        tensor = tensor.detach()
        if fp32:
            tensor = tensor.float().contiguous()
        self.held.append(tensor)
        return tensor.data_ptr()

    def norm(self, norm: LayerNorm) -> Norm:
        return Norm(self.pointer(norm.scale, fp32=True), self.pointer(norm.shift, fp32=True))

    def product(self, weight: torch.Tensor | None, bias: torch.Tensor | None) -> Product:
        """``weight`` None: no product (key and value when the query's holds all three)."""
        if weight is None:
            return Product(None, None, 0, 0, 0, 0)
        rows, cols = weight.shape
        return Product(self.pointer(weight), self.pointer(bias, fp32=True), rows, cols,
                       *layout(weight))

    def block(self, block: TransformerBlock,
              packed: tuple[torch.Tensor, torch.Tensor | None] | None) -> Block:
        attention, feed_forward = block.attention, block.feed_forward
        projections = (attention.query_projection, attention.key_projection,
                       attention.value_projection)
        if packed is not None:  # one product for all three
            products = [self.product(*packed), self.product(None, None),
                        self.product(None, None)]
        else:
            products = [self.product(layer.weight, layer.bias) for layer in projections]
        products += [self.product(layer.weight, layer.bias) for layer in (
            attention.output_projection, feed_forward.expansion, feed_forward.contraction)]
        return Block(self.norm(block.attention_norm), self.norm(block.feed_forward_norm),
                     *products)
