"""Generation with the preallocated KV cache, batched prompts and dtypes, against transformers."""

import copy
import re

import pytest
import torch
from checkpoints import reference_model, write_hub_layout

from gpt2port import ConfigError, generate, load_pretrained
from gpt2port.engine import kernels
from gpt2port.engine.decoding import Continuation, Decoder
from gpt2port.engine.generation import stream


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(gpt2port's model, transformers' model) on the same tiny random weights (context 64)."""
    reference = reference_model(seed=3)
    folder = write_hub_layout(reference, tmp_path_factory.mktemp("generation") / "tiny")
    return load_pretrained(folder), reference


def reference_greedy(reference, prompt, new_tokens):
    ids = torch.tensor([prompt])
    return reference.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                              attention_mask=torch.ones_like(ids),
                              pad_token_id=0)[0].tolist()


@pytest.mark.parametrize("compiled", [None, False])
def test_cached_steps_give_transformers_logits_at_every_position(pair, compiled):
    ours, reference = pair
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(ids).logits
        decoder = Decoder(ours, batch_size=2, capacity=40, compiled=compiled)
        first = decoder.forward(ids[:, :25])  # a prompt, then one token at a time
        steps = [decoder.forward(ids[:, t:t + 1]) for t in range(25, 40)]
    found = torch.cat([first, *steps], dim=1)
    assert (found - expected).abs().max() < 1e-5


def test_chunked_prefill_with_a_cache(pair):
    ours, reference = pair
    ids = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        decoder = Decoder(ours, batch_size=1)
        found = torch.cat([decoder.forward(ids[:, :10]), decoder.forward(ids[:, 10:])], 1)
        assert (found - reference(ids).logits).abs().max() < 1e-5


@pytest.mark.parametrize("compile", [None, False])  # the compiled step, the regular one
def test_prompts_of_different_lengths_each_get_their_own_greedy_answer(pair, compile):
    ours, reference = pair
    prompts = [[5, 17, 300, 42, 9, 101, 7], [8], [400, 3, 3, 3]]
    found = generate(ours, prompts, 12, compile=compile)
    for prompt, row in zip(prompts, found, strict=True):
        assert row == reference_greedy(reference, prompt, 12)


def test_past_the_context_the_window_slides_as_a_full_recomputation_would(pair):
    ours, reference = pair
    ids = torch.randint(0, 512, (1, 58), generator=torch.Generator().manual_seed(2))
    found = generate(ours, ids, 12)[0].tolist()
    expected = ids[0].tolist()
    with torch.no_grad():
        for _ in range(12):  # transformers on the last 64 tokens, no cache
            window = torch.tensor([expected[-64:]])
            expected.append(int(reference(window).logits[0, -1].argmax()))
    assert found == expected


def test_sampling_is_seeded_and_respects_top_k(pair):
    ours, reference = pair
    prompt = torch.tensor([[1, 2, 3, 4]])
    first = generate(ours, prompt, 15, temperature=1.0, top_k=5, seed=7)
    assert torch.equal(first, generate(ours, prompt, 15, temperature=1.0, top_k=5, seed=7))
    assert not torch.equal(first, generate(ours, prompt, 15, temperature=1.0, top_k=5, seed=8))
    with torch.no_grad():
        for t in range(4, 19):  # each sampled token is among transformers' 5 best
            best = reference(first[:, :t]).logits[0, -1].topk(5).indices.tolist()
            assert int(first[0, t]) in best
    assert torch.equal(generate(ours, prompt, 10, temperature=1.0, top_k=1, seed=1),
                       generate(ours, prompt, 10))


def test_stop_at_eos_ends_each_row_at_its_end_of_text(pair, monkeypatch):
    ours, _ = pair
    from gpt2port.engine import generation

    greedy = generate(ours, [[1, 2, 3]], 10)[0]
    monkeypatch.setattr(generation, "END_OF_TEXT_ID", greedy[5])  # the 3rd new token
    found = generation.generate(ours, [[1, 2, 3], [9, 9]], 10, stop_at_eos=True)
    assert found[0] == greedy[:6]
    streamed = list(stream(ours, torch.tensor([[1, 2, 3]]), 10, stop_at_eos=True))
    assert len(streamed) == 3


@pytest.mark.parametrize(("dtype", "bound"), [(torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_half_precision_stays_close_to_transformers_fp32(pair, tmp_path, dtype, bound):
    _, reference = pair
    folder = write_hub_layout(reference, tmp_path / "tiny")
    model = load_pretrained(folder, dtype=dtype)
    ids = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(ids).logits
        found = model(ids).float()
        decoder = Decoder(model, batch_size=2)
        stepped = torch.cat([decoder.forward(ids[:, :20]), decoder.forward(ids[:, 20:])],
                            1).float()
    scale = expected.abs().max()
    assert (found - expected).abs().max() < bound * scale
    assert (stepped - expected).abs().max() < bound * scale
    assert decoder.cache.keys.dtype == torch.float32  # on the CPU: the fp32 kernel is faster


@pytest.mark.parametrize(("options", "said"), [
    ({"max_new_tokens": -1}, "max_new_tokens must be 0 or more, got -1"),
    ({"temperature": -0.5}, "temperature must be 0 (greedy) or more, got -0.5"),
    ({"temperature": float("nan")}, "temperature must be 0 (greedy) or more, got nan"),
    ({"top_k": 0}, "top_k must be 1 or more, got 0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
    ({"seed": -1}, "seed must be an integer from 0 to 2**63 - 1, got -1"),
])
def test_options_that_cannot_work_are_refused_before_any_step(pair, options, said):
    ours, _ = pair
    options = {"max_new_tokens": 3, "temperature": 1.0, **options}
    with pytest.raises(ConfigError, match=re.escape(said)):
        stream(ours, torch.tensor([[1, 2]]), options.pop("max_new_tokens"), **options)


def counted(monkeypatch, name):
    """Count the products that go through ``kernels.<name>``."""
    calls = []
    real = getattr(kernels, name)

    def counting(*args):
        calls.append((args[1].shape, torch.get_num_threads()))
        return real(*args)
    monkeypatch.setattr(kernels, name, counting)
    return calls


@pytest.fixture
def matvec_calls(monkeypatch):
    return counted(monkeypatch, "openblas_matvec")


def torch_flags():
    return torch.get_num_threads(), torch.backends.mkldnn.enabled, torch.is_grad_enabled()


def test_batch_one_fp32_decoding_streams_through_openblas_with_transformers_ids(pair,
                                                                                 matvec_calls):
    ours, reference = pair
    flags = torch_flags()
    found = generate(ours, torch.tensor([[5, 6, 7]]), 40, compile=False)[0].tolist()
    assert found == reference_greedy(reference, [5, 6, 7], 40)
    layers = ours.config["number_of_layers"]
    assert len(matvec_calls) == 39 * (4 * layers + 1)  # every step's products, q/k/v as one
    assert {threads for _, threads in matvec_calls} == {1}  # torch's ops leave OpenBLAS the cores
    assert torch_flags() == flags  # given back


def test_batch_one_bf16_decoding_runs_torchs_own_matvec_with_transformers_ids(pair, tmp_path,
                                                                            monkeypatch):
    """oneDNN's bf16 matrix-vector kernel read 10 GB/s, PyTorch's own 25 (docs/benchmarks.md):
    the decoding steps' products run by ``torch.mv``, the ids are transformers' own in bf16, and
    oneDNN stays enabled for everyone else."""
    _, reference = pair
    model = load_pretrained(write_hub_layout(reference, tmp_path / "tiny"), dtype="bfloat16")
    calls = counted(monkeypatch, "torch_matvec")
    flags = torch_flags()
    found = generate(model, torch.tensor([[5, 6, 7]]), 40, compile=False)[0].tolist()
    assert found == reference_greedy(copy.deepcopy(reference).bfloat16(), [5, 6, 7], 40)
    layers = model.config["number_of_layers"]
    assert len(calls) == 39 * (4 * layers + 1) and torch_flags() == flags


def test_openblas_products_equal_torch_ones(pair):
    ours, _ = pair
    layer = ours.transformer_blocks[0].feed_forward.expansion
    x = torch.randn(1, 1, layer.in_features, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
        found = kernels.openblas_matvec(x, layer.weight, layer.bias)
        assert torch.allclose(found, expected, rtol=1e-5, atol=1e-6)
        found = kernels.torch_matvec(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16())
        assert torch.allclose(found.float(), expected, rtol=2e-2, atol=2e-2)


def test_openblas_stays_out_of_batches_half_precision_and_training(pair, matvec_calls, tmp_path):
    ours, reference = pair
    generate(ours, torch.tensor([[5, 6, 7], [1, 2, 3]]), 5)
    half = load_pretrained(write_hub_layout(reference, tmp_path / "tiny"), dtype="float16")
    generate(half, torch.tensor([[5, 6, 7]]), 5)
    training = copy.deepcopy(ours).train()
    ids = torch.tensor([[5, 6, 7]])
    training(ids).sum().backward()
    assert matvec_calls == [] and training.output_head.weight.grad is not None


def logits_along(model, ids, prompt_length, *, static_cache):
    """The next-token logits after each position of ``ids`` from ``prompt_length`` on, the
    continuation fed ``ids`` itself (teacher-forced, so both paths see the same tokens)."""
    continuation = Continuation(model, ids[:, :prompt_length], ids.shape[1] - prompt_length,
                                static_cache=static_cache)
    found = [continuation.start()]
    for column in range(prompt_length, ids.shape[1] - 1):
        found.append(continuation.extend(ids[:, column:column + 1]))
    return torch.stack(found, 1)


def test_a_static_cache_gives_the_same_ids(pair):
    """The fixed-shape step a CUDA graph replays, run on the CPU: the same logits as the regular
    path along one sequence, through the sliding window past the context (64) too, and
    transformers' greedy ids. Compared teacher-forced: two greedy runs could part at a near
    tie, where the last bits of a product (which depend on how busy the machine is: MKL may
    use fewer threads) pick the token."""
    ours, reference = pair
    prompts = torch.tensor([[5, 6, 7], [1, 2, 3]])
    ids = generate(ours, prompts, 100)
    with torch.inference_mode():
        regular = logits_along(ours, ids, 3, static_cache=False)
        static = logits_along(ours, ids, 3, static_cache=True)
    assert (static - regular).abs().max() <= 1e-4 * regular.abs().max()
    top2 = regular.topk(2, -1).values
    clear = (top2[..., 0] - top2[..., 1]) > 1e-3  # no near tie at this step
    assert torch.equal(static.argmax(-1)[clear], regular.argmax(-1)[clear])
    static_ids = generate(ours, prompts[:1], 40, static_cache=True)
    assert static_ids[0].tolist() == reference_greedy(reference, [5, 6, 7], 40)
    sampled = {"temperature": 0.8, "top_k": 20, "seed": 3}
    assert torch.equal(generate(ours, prompts[:1], 30, static_cache=True, **sampled),
                       generate(ours, prompts[:1], 30, **sampled))


def test_a_static_cache_takes_prompts_of_one_length(pair):
    ours, _ = pair
    with pytest.raises(ConfigError, match="static_cache takes prompts of one length"):
        stream(ours, torch.tensor([[0, 5]]), 3, attention_mask=torch.tensor([[0, 1]]),
               static_cache=True)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device here: the captured CUDA graph runs where one is")
def test_a_cuda_graph_gives_the_same_ids(pair):
    ours, _ = pair
    model = ours.to("cuda")
    try:
        prompts = torch.tensor([[5, 6, 7]], device="cuda")
        assert torch.equal(generate(model, prompts, 80, static_cache=True),
                           generate(model, prompts, 80))
    finally:
        ours.to("cpu")


def test_a_static_cache_never_reads_uninitialised_memory(pair, monkeypatch):
    """Attention over the whole capacity multiplies masked slots' values by 0, and 0 x NaN is
    NaN: whatever the allocator hands the cache, the unwritten slots must not poison a step
    (on a busy machine reused memory made every logit NaN, and greedy picked id 0)."""
    ours, _ = pair
    real = torch.empty

    def poisoned(*shape, **options):  # float memory as garbage as an allocator may give it
        found = real(*shape, **options)
        return found.fill_(float("nan")) if found.is_floating_point() else found

    monkeypatch.setattr(torch, "empty", poisoned)
    static = generate(ours, torch.tensor([[5, 6, 7]]), 20, static_cache=True)
    monkeypatch.undo()
    assert static.tolist() == generate(ours, torch.tensor([[5, 6, 7]]), 20).tolist()
