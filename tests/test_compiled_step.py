"""The compiled one-token step (``generate(..., compile=True)``) against transformers and the
regular path: logits at every position, greedy ids, the sliding window, every dtype and weight
layout it reads; the models and machines it refuses, and its build cache."""

import copy
import ctypes
import os
import stat
import subprocess
import sys
import threading

import pytest
import torch
from checkpoints import reference_model, write_hub_layout, write_layout

from gpt2port import ConfigError, generate, load_pretrained
from gpt2port.engine import compiled_step
from gpt2port.engine.decoding import Continuation, Decoder
from gpt2port.engine.generation import stream
from gpt2port.errors import CompileError
from gpt2port.text.tokenizer import BUNDLED

pytestmark = pytest.mark.skipif(compiled_step.compiler() is None,
                                reason="no C compiler on this machine to build the step with")


@pytest.fixture(scope="module", autouse=True)
def build_cache(tmp_path_factory):
    """The step built into a cache folder of this module's own, not the user's."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder))
        compiled_step.library.cache_clear()
        yield folder / "gpt2port"
    compiled_step.library.cache_clear()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(gpt2port's model in the Hub's layout, transformers' model), tiny random weights."""
    reference = reference_model(seed=3)
    folder = write_hub_layout(reference, tmp_path_factory.mktemp("compiled") / "tiny")
    return load_pretrained(folder), reference


def stepped_logits(model, ids, prompt_length, *, compiled):
    """The logits after every position of ``ids`` (1, T): the prompt in one pass, then one
    token at a time."""
    with torch.inference_mode():
        decoder = Decoder(model, 1, ids.shape[1], compiled=compiled)
        found = [decoder.forward(ids[:, :prompt_length])]
        found += [decoder.forward(ids[:, t:t + 1]) for t in range(prompt_length, ids.shape[1])]
    return torch.cat(found, 1).float()


def row_major(model):
    """A copy of ``model`` whose every weight is its own row-major tensor (no q|k|v packing)."""
    copied = copy.deepcopy(model)
    for parameter in copied.parameters():
        parameter.data = parameter.data.contiguous().clone()
    copied.tie_output_head()
    return copied


@pytest.mark.parametrize("layout", ["hub", "row-major"])
def test_compiled_steps_give_transformers_logits_at_every_position(pair, layout):
    """The Hub's fp32 layout reads transposed, packed q|k|v weights; a row-major model reads
    each projection by rows: both are the step's fp32 kernels."""
    ours, reference = pair
    model = ours if layout == "hub" else row_major(ours)
    ids = torch.randint(0, 512, (1, 50), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(ids).logits
    found = stepped_logits(model, ids, 5, compiled=True)
    assert (found - expected).abs().max() < 1e-4 * expected.abs().max()


@pytest.mark.parametrize(("dtype", "bound"), [(torch.float16, 0.02), (torch.bfloat16, 0.1)])
def test_half_precision_compiled_steps_stay_close_to_transformers_fp32(pair, tmp_path, dtype,
                                                                      bound):
    _, reference = pair
    model = load_pretrained(write_hub_layout(reference, tmp_path / "tiny"), dtype=dtype)
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(ids).logits
    found = stepped_logits(model, ids, 3, compiled=True)
    regular = stepped_logits(model, ids, 3, compiled=False)
    scale = expected.abs().max()
    assert (found - expected).abs().max() < bound * scale
    # its activations stay fp32, so it is no further from fp32 than the regular half step
    assert (found - expected).abs().max() <= (regular - expected).abs().max() + 1e-3 * scale


def padded_batch(lengths, total, seed):
    """Ids (B, total) whose row i is left-padded by max(lengths) - lengths[i], and its mask."""
    ids = torch.randint(0, 512, (len(lengths), total), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :max(lengths) - length] = 0
    return ids, mask


def stepped_batch_logits(model, ids, mask, prompt_length, *, compiled):
    """As ``stepped_logits``, for a left-padded batch."""
    with torch.inference_mode():
        decoder = Decoder(model, ids.shape[0], ids.shape[1], compiled=compiled)
        assert (decoder.compiled is not None) == compiled
        found = [decoder.forward(ids[:, :prompt_length], mask[:, :prompt_length])]
        found += [decoder.forward(ids[:, t:t + 1], mask[:, :t + 1])
                  for t in range(prompt_length, ids.shape[1])]
    return torch.cat(found, 1).float()


@pytest.mark.parametrize("layout", ["hub", "row-major"])
@pytest.mark.parametrize("lengths", [[7, 2, 4, 1], [3, 1, 2, 3]])
def test_a_padded_batch_of_compiled_steps_gives_transformers_logits(pair, layout, lengths):
    """Prompts of different lengths, left-padded (28 tokens in all: by the regular step; 12: by
    the compiled one), then 25 steps of the whole batch in one call: every real position's
    logits are transformers' with the same mask and positions."""
    ours, reference = pair
    model = ours if layout == "hub" else row_major(ours)
    ids, mask = padded_batch(lengths, max(lengths) + 25, seed=8)
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask,
                             position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    found = stepped_batch_logits(model, ids, mask, max(lengths), compiled=True)
    real = mask.bool()
    assert (found[real] - expected[real]).abs().max() < 1e-4 * expected.abs().max()


@pytest.mark.parametrize(("dtype", "bound"), [(torch.float16, 0.02), (torch.bfloat16, 0.1)])
def test_a_half_precision_padded_batch_stays_close_to_transformers_fp32(pair, tmp_path, dtype,
                                                                       bound):
    _, reference = pair
    model = load_pretrained(write_hub_layout(reference, tmp_path / "tiny"), dtype=dtype)
    ids, mask = padded_batch([5, 3, 1], 24, seed=9)
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask,
                             position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    real, scale = mask.bool(), expected.abs().max()
    found = stepped_batch_logits(model, ids, mask, 5, compiled=True)[real]
    regular = stepped_batch_logits(model, ids, mask, 5, compiled=False)[real]
    assert (found - expected[real]).abs().max() < bound * scale
    assert (found - expected[real]).abs().max() <= (
        (regular - expected[real]).abs().max() + 1e-3 * scale)


def test_short_prompts_run_compiled_and_long_fp32_ones_by_matrix_products(pair, monkeypatch):
    ours, _ = pair
    decoder = Decoder(ours, 2, 40, compiled=True)
    assert decoder.compiled.runs(torch.ones(2, 8)) and decoder.compiled.runs(torch.ones(2, 1))
    assert not decoder.compiled.runs(torch.ones(2, 9))
    regular = []
    monkeypatch.setattr(Decoder, "logits", lambda *args, **kwargs: regular.append(1))
    with torch.inference_mode():
        decoder.forward(torch.ones(2, 8, dtype=torch.long))
    assert regular == []  # the prompt's 16 tokens ran compiled


def test_a_row_of_a_batch_gets_the_logits_it_gets_alone(pair):
    """Rows share each weight read, not their sums."""
    ours, _ = pair
    ids, mask = padded_batch([6, 1, 3], 30, seed=10)
    batched = stepped_batch_logits(ours, ids, mask, 6, compiled=True)
    for row, length in enumerate([6, 1, 3]):
        alone = stepped_logits(ours, ids[row:row + 1, 6 - length:], length, compiled=True)
        assert (batched[row, 6 - length:] - alone[0]).abs().max() <= 1e-5 * alone.abs().max()


def test_compiled_batches_give_transformers_greedy_ids_for_prompts_of_any_length(pair):
    ours, reference = pair
    prompts = [[5, 17, 300, 42, 9, 101, 7], [8], [400, 3, 3, 3], [1, 2]]
    found = generate(ours, prompts, 30, compile=True)
    for prompt, row in zip(prompts, found, strict=True):
        ids = torch.tensor([prompt])
        assert row == reference.generate(ids, max_new_tokens=30, do_sample=False,
                                         attention_mask=torch.ones_like(ids),
                                         pad_token_id=0)[0].tolist()


def test_the_portable_build_gives_the_same_logits(pair, tmp_path, monkeypatch):
    """Built without the CPU's own instructions (as on a CPU without AVX2): the plain C
    products and half-precision conversions, against the native build and transformers."""
    ours, reference = pair
    ids = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(6))
    half = write_hub_layout(reference, tmp_path / "half")
    models = [ours, row_major(ours), load_pretrained(half, dtype=torch.float16),
              load_pretrained(half, dtype=torch.bfloat16)]
    native = [stepped_logits(model, ids, 3, compiled=True) for model in models]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(compiled_step, "FLAG_SETS", (("-O3", "-fopenmp"), ("-O3",)))
    compiled_step.library.cache_clear()
    portable = [stepped_logits(model, ids, 3, compiled=True) for model in models]
    compiled_step.library.cache_clear()
    with torch.no_grad():
        expected = reference(ids).logits
    scale = expected.abs().max()
    for model, fast, plain in zip(models, native, portable, strict=True):
        dtype = model.output_head.weight.dtype  # the logits come back in it: one step apart
        assert (plain - fast).abs().max() <= (1e-5 + torch.finfo(dtype).eps) * scale, dtype
    assert (portable[0] - expected).abs().max() < 1e-4 * scale


def test_compiled_greedy_ids_are_transformers_own(pair):
    ours, reference = pair
    prompt = [5, 6, 7]
    found = generate(ours, torch.tensor([prompt]), 40, compile=True)[0].tolist()
    expected = reference.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False,
                                  attention_mask=torch.ones(1, 3, dtype=torch.long),
                                  pad_token_id=0)[0].tolist()
    assert found == expected


def test_past_the_context_the_compiled_step_follows_the_sliding_window(pair):
    """100 new tokens past a context of 64: teacher-forced along one sequence, the compiled
    steps give the regular path's logits, window slides included."""
    ours, _ = pair
    ids = generate(ours, torch.tensor([[5, 6, 7]]), 100)
    found, regular = [], []
    with torch.inference_mode():
        for compiled, into in ((True, found), (False, regular)):
            continuation = Continuation(ours, ids[:, :3], 100, compiled=compiled)
            into.append(continuation.start())
            for column in range(3, ids.shape[1] - 1):
                into.append(continuation.extend(ids[:, column:column + 1]))
    found, regular = torch.stack(found), torch.stack(regular)
    assert (found - regular).abs().max() <= 1e-4 * regular.abs().max()
    sampled = {"temperature": 0.8, "top_k": 20, "seed": 3}
    assert torch.equal(generate(ours, ids[:, :3], 30, compile=True, **sampled),
                       generate(ours, ids[:, :3], 30, **sampled))


def test_the_exact_gelu_and_an_untied_head(tmp_path):
    """nanoGPT's exact GELU, and a model with no tied head: each by its own tensors."""
    reference = reference_model(seed=5, activation_function="gelu", tie_word_embeddings=False)
    with torch.no_grad():
        reference.lm_head.weight.normal_(0, 0.2)
    reference.save_pretrained(tmp_path / "tiny")
    model = load_pretrained(tmp_path / "tiny")
    assert model.config["gelu_approximation"] == "none"
    ids = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(ids).logits
    found = stepped_logits(model, ids, 4, compiled=True)
    assert (found - expected).abs().max() < 1e-4 * expected.abs().max()


def test_threads_each_run_their_own_compiled_generation(pair):
    ours, _ = pair
    prompts = [torch.tensor([[t, t + 1, t + 2]]) for t in range(4)]
    expected = [generate(ours, prompt, 30, compile=True) for prompt in prompts]
    found = [None] * len(prompts)

    def run(index):
        found[index] = generate(ours, prompts[index], 30, compile=True)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(map(torch.equal, found, expected))


def hooked(model):
    copied = copy.deepcopy(model)
    copied.transformer_blocks[1].feed_forward.register_forward_hook(lambda *_: None)
    return copied


def replaced(model):
    copied = copy.deepcopy(model)
    copied.transformer_blocks[0].feed_forward.expansion = torch.nn.Sequential(
        copied.transformer_blocks[0].feed_forward.expansion)
    return copied


@pytest.mark.parametrize(("change", "said"), [
    (lambda model: copy.deepcopy(model).train(), "the model is in training mode"),
    (hooked, "the model has forward hooks"),
    (replaced, "block 0 has replaced ones"),
    (lambda model: copy.deepcopy(model).double(), "the model is torch.float64"),
])
def test_a_model_the_step_cannot_run_is_refused_before_any_step(pair, change, said):
    ours, _ = pair
    model = change(ours)
    with pytest.raises(ConfigError, match=said) as raised:
        generate(model, torch.ones(1, 3, dtype=torch.long), 5, compile=True)
    assert "leave compile off" in raised.value.hint


@pytest.mark.parametrize(("change", "batch", "compiled"), [
    (lambda model: model, 1, True), (lambda model: model, 8, True),
    (lambda model: model, 16, True), (lambda model: model, 17, False),  # then MKL's is faster
    (hooked, 1, False),
    (replaced, 1, False), (lambda model: copy.deepcopy(model).double(), 1, False)])
def test_the_compiled_step_is_the_default_wherever_it_applies(pair, change, batch, compiled,
                                                              build_cache):
    ours, _ = pair
    model = change(ours)
    ids = torch.randint(0, 512, (batch, 3), generator=torch.Generator().manual_seed(batch))
    decoder = Continuation(model, ids, 4).decoder
    assert (decoder.compiled is not None) == compiled
    assert Continuation(model, ids, 4, compiled=False).decoder.compiled is None
    assert Continuation(model, ids, 4, static_cache=True).decoder.compiled is None
    assert torch.equal(generate(model, ids, 4), generate(model, ids, 4, compile=False))


def test_asked_for_a_batch_of_any_size_runs_compiled(pair):
    ours, _ = pair
    ids = torch.randint(0, 512, (40, 3), generator=torch.Generator().manual_seed(40))
    assert Continuation(ours, ids, 4, compiled=True).decoder.compiled is not None
    assert torch.equal(generate(ours, ids, 6, compile=True), generate(ours, ids, 6,
                                                                      compile=False))
    half = copy.deepcopy(ours).half()
    assert Continuation(half, ids, 4).decoder.compiled is not None  # no batch limit in fp16


def test_without_a_compiler_it_says_so(pair, monkeypatch, tmp_path):
    ours, _ = pair
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built there
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    compiled_step.library.cache_clear()
    with pytest.raises(CompileError, match="no C compiler found") as raised:
        generate(ours, torch.tensor([[1, 2]]), 3, compile=True)
    assert raised.value.exit_code == 8 and "install a C compiler" in raised.value.hint
    # asked for nothing, the same generation runs by the regular step, with no error
    assert torch.equal(generate(ours, torch.tensor([[1, 2]]), 3),
                       generate(ours, torch.tensor([[1, 2]]), 3, compile=False))
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    compiled_step.library.cache_clear()
    with pytest.raises(CompileError, match=f"{broken} could not compile .*step.c"):
        generate(ours, torch.tensor([[1, 2]]), 3, compile=True)
    assert not list((tmp_path / "gpt2port").iterdir())  # no partial build left behind
    compiled_step.library.cache_clear()


def test_the_step_is_built_once_into_the_cache_with_the_umask(pair, build_cache, monkeypatch):
    ours, _ = pair
    generate(ours, torch.tensor([[1, 2]]), 3, compile=True)
    built = list(build_cache.iterdir())
    assert len(built) == 1 and built[0].name.startswith("step-") and built[0].suffix == ".so"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(built[0].stat().st_mode) & umask == 0
    compiled_step.library.cache_clear()  # a new process: found, not built again
    monkeypatch.setattr(compiled_step, "build", lambda *_: pytest.fail("built again"))
    assert torch.equal(generate(ours, torch.tensor([[1, 2]]), 3, compile=True),
                       generate(ours, torch.tensor([[1, 2]]), 3))


def test_the_cli_prints_the_same_text_compiled_or_not_and_says_why_it_cannot(tmp_path,
                                                                         build_cache):
    model = write_layout("hub", tmp_path / "model", vocab_size=50257, bos_token_id=50256,
                         eos_token_id=50256)
    for name in ("vocab.json", "merges.txt"):
        (model / name).write_bytes((BUNDLED / name).read_bytes())
    env = {**os.environ, "XDG_CACHE_HOME": str(build_cache.parent)}

    def run(*options, **changes):
        return subprocess.run([sys.executable, "-m", "gpt2port", "generate", str(model),
                               "The dog", "--max-new-tokens", "20", *options],
                              capture_output=True, text=True, env={**env, **changes},
                              check=False, timeout=300)

    regular, compiled, default = run("--no-compile"), run("--compile"), run()
    assert regular.returncode == compiled.returncode == default.returncode == 0, compiled.stderr
    assert compiled.stdout == regular.stdout == default.stdout
    assert len(compiled.stdout) > len("The dog")
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'step.c:1:1: error: this compiler is broken' >&2\n"
                      "exit 1\n")
    broken.chmod(0o755)
    refused = run("--compile", CC=str(broken), XDG_CACHE_HOME=str(tmp_path / "empty-cache"))
    assert refused.returncode == 8 and "Traceback" not in refused.stderr
    assert refused.stderr.splitlines() == [
        (f"error: {broken} could not compile {compiled_step.SOURCE}: step.c:1:1: error: this "
         "compiler is broken"),
        "hint: check that it is a working C compiler (CC= names another), or leave compile off"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("token", [-1, 1000, 60000, 2**40])
def test_ids_outside_the_vocabulary_are_refused_before_any_step(pair, dtype, token):
    ours, _ = pair
    model = copy.deepcopy(ours).to(dtype)
    vocabulary = model.config["vocab_size"]
    with pytest.raises(ConfigError, match=f"token id {token} is outside the model's vocabulary "
                       f"\\(0 to {vocabulary - 1}\\)"):
        generate(model, [[1, token]], 3, compile=True)
    with pytest.raises(ConfigError, match=f"token id {token} is outside"):
        generate(model, torch.tensor([[token]]), 3, compile=True)


def test_the_step_checks_ids_and_positions_itself(pair):
    """Past the Python checks, the C step reads no table and writes no cache row outside its
    bounds: it answers why instead."""
    ours, _ = pair
    with torch.inference_mode():
        decoder = Decoder(ours, 2, 8, compiled=True)
        step = decoder.compiled
        rows = ours.token_embedding_table.weight.shape[0]
        positions = ours.position_embedding_table.weight.shape[0]

        def call(tokens, slots=(0, 0), places=(0, 0), sequences=(0, 1), logit_rows=(0, 1),
                 padding=None, stride=0):
            held = [torch.tensor(each) for each in (tokens, places, sequences, slots, logit_rows)]
            asked = compiled_step.Rows(
                *(tensor.data_ptr() for tensor in held[:4]), len(tokens),
                None if padding is None else padding.data_ptr(), stride, held[4].data_ptr(),
                len(logit_rows))
            return step.library.gpt2port_step(ctypes.byref(step.model), ctypes.byref(asked))

        assert call([0, rows]) == 1
        assert call([-1, 0]) == 1
        assert call([0, 0], slots=(0, 8)) == 2  # the cache holds 8
        assert call([0, 0], slots=(-1, 0)) == 2
        assert call([0, 0], places=(0, positions)) == 2
        assert call([0, 0], places=(-1, 0)) == 2
        assert call([0, 0], sequences=(0, 2)) == 2  # two sequences
        assert call([0] * 17, slots=[0] * 17, places=[0] * 17, sequences=[0] * 17) == 2
        assert call([0, 0], logit_rows=(0, 2)) == 2
        assert call([0, 0], logit_rows=(1, 0)) == 2
        padding = torch.ones(2, 3, dtype=torch.long)
        assert call([0, 0], slots=(3, 3), padding=padding, stride=3) == 2
        assert call([0, 0]) == 0
        assert call([0, 0], slots=(2, 2), padding=padding, stride=3) == 0
        with pytest.raises(ConfigError, match="position 8 is outside the cache"):
            step(torch.tensor([[0], [0]]), 8)
        with pytest.raises(ConfigError, match=f"token id {rows} is outside"):
            step(torch.tensor([[0], [rows]]), 0)
        with pytest.raises(ConfigError, match="3 x 1 token\\(s\\) for a step of 2 sequence"):
            step(torch.tensor([[0], [0], [0]]), 0)
        with pytest.raises(ConfigError, match="a padding mask of \\[2, 2\\]"):
            step(torch.tensor([[0], [0]]), 2, torch.ones(2, 2))


def test_the_c_structs_are_laid_out_as_the_ctypes_ones():
    library = compiled_step.library()
    sizes = (ctypes.c_int64 * len(compiled_step.STRUCTS))()
    library.gpt2port_struct_sizes(ctypes.byref(sizes))
    assert list(sizes) == [ctypes.sizeof(s) for s in compiled_step.STRUCTS]


def test_a_mismatched_struct_is_refused(monkeypatch):
    class Longer(compiled_step.Model):
        _fields_ = (("extra", ctypes.c_int64),)
    monkeypatch.setattr(compiled_step, "STRUCTS", (*compiled_step.STRUCTS[:3], Longer,
                                                   compiled_step.Rows))
    compiled_step.library.cache_clear()
    try:
        with pytest.raises(CompileError, match="structs do not match gpt2port's \\(Longer"):
            compiled_step.library()
    finally:
        compiled_step.library.cache_clear()


@pytest.mark.parametrize("change", ["replace a layer", "retype", "add a hook", "train"])
def test_a_model_changed_while_generating_is_refused(pair, change):
    model = copy.deepcopy(pair[0])
    tokens = stream(model, torch.tensor([[1, 2]]), 5, compile=True)
    next(tokens)
    if change == "replace a layer":
        model.transformer_blocks[0].feed_forward.expansion = torch.nn.Linear(64, 256)
    elif change == "retype":
        model.half()
    elif change == "add a hook":
        model.layer_norm.register_forward_hook(lambda *_: None)
    else:
        model.train()
    with pytest.raises(ConfigError, match="the model changed while it was generating"):
        next(tokens)


def test_a_replaced_attention_is_refused_on_every_path(pair):
    model = copy.deepcopy(pair[0])
    model.transformer_blocks[1].attention = torch.nn.Identity()
    for compile in (True, False):
        with pytest.raises(ConfigError, match="block 1's attention is a Identity"):
            generate(model, [[1, 2]], 3, compile=compile)
