"""gpt2port changes nothing another thread can see: layers built meanwhile are initialised,
torch's flags and the umask stay as they were, and two generations at once each get their own
serial answer. Every check counts outcomes, never time: it holds however busy the machine is."""

import math
import os
import threading

import pytest
import torch
from checkpoints import write_layout

from gpt2port import generate, load_pretrained
from gpt2port.io.outputs import current_umask


def in_threads(*jobs):
    """Run each job on its own thread, all released at once; return their results."""
    start, results, errors = threading.Barrier(len(jobs)), [None] * len(jobs), []

    def run(index, job):
        start.wait()
        try:
            results[index] = job()
        except Exception as error:  # noqa: BLE001 - reported by the test below
            errors.append(error)

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def test_layers_built_while_a_model_loads_are_initialised(tmp_path):
    """The loader skips initialisation with torch's thread-local modes, patching nothing."""
    folder = write_layout("hub", tmp_path / "hub")
    loads, done = 8, threading.Event()

    def load():
        for _ in range(loads):
            load_pretrained(folder)
        done.set()

    def build():
        built = [torch.nn.Linear(256, 256)]
        while not done.is_set():
            built.append(torch.nn.Linear(256, 256))
        return built

    _, built = in_threads(load, build)
    bound = 1 / math.sqrt(256)  # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))
    for layer in built:
        weight = layer.weight.detach()
        assert weight.abs().max() <= bound and 0.8 < float(weight.std()) * math.sqrt(3) / bound
        assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0


def test_two_generations_at_once_get_their_serial_ids_and_leave_torch_as_found(tmp_path):
    folder = write_layout("hub", tmp_path / "hub")
    fp32, bf16 = load_pretrained(folder), load_pretrained(folder, dtype="bfloat16")
    prompts = {"fp32": [[5, 6, 7]], "bf16": [[1, 2, 3, 4]]}
    serial = {"fp32": generate(fp32, prompts["fp32"], 30), "bf16": generate(bf16, prompts["bf16"], 30)}
    flags = (torch.get_num_threads(), torch.backends.mkldnn.enabled, torch.is_grad_enabled())
    for _ in range(4):
        found = in_threads(lambda: generate(fp32, prompts["fp32"], 30),
                           lambda: generate(bf16, prompts["bf16"], 30),
                           lambda: generate(fp32, prompts["fp32"], 30))
        assert found == [serial["fp32"], serial["bf16"], serial["fp32"]]
    assert (torch.get_num_threads(), torch.backends.mkldnn.enabled,
            torch.is_grad_enabled()) == flags


def test_the_umask_is_read_without_being_set(monkeypatch):
    """Setting it, even for a moment, would give another thread's new files other permissions."""
    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    previous = real(0o027)
    try:
        assert current_umask() == 0o027
    finally:
        real(previous)
    assert calls == []


def test_an_fp32_step_runs_torch_on_one_thread_for_its_own_thread_only(tmp_path):
    """fp32 steps give torch's small operations one OpenMP thread (OpenBLAS streams the
    weights on the others): the calling thread's own setting, never another thread's, nor what
    threads started meanwhile get."""
    model = load_pretrained(write_layout("hub", tmp_path / "hub"))
    threads, done = torch.get_num_threads(), threading.Event()

    def generating():
        for _ in range(6):
            generate(model, [[5, 6, 7]], 30)
        done.set()

    def watching():
        seen, started = {torch.get_num_threads()}, []
        while not done.is_set():
            seen.add(torch.get_num_threads())
            thread = threading.Thread(target=lambda: started.append(torch.get_num_threads()))
            thread.start()
            thread.join()
        return seen | set(started)

    assert in_threads(generating, watching)[1] == {threads}
    assert torch.get_num_threads() == threads


def test_verify_leaves_transformers_logging_to_other_threads(tmp_path):
    """transformers' reference runs in a child process: its verbosity and progress bars in this
    process are never switched, not even for a moment."""
    from transformers.utils import logging

    from gpt2port.proof.verification import verify_model

    folder = write_layout("hub", tmp_path / "hub")
    model, done = load_pretrained(folder), threading.Event()
    state = (logging.get_verbosity(), logging.is_progress_bar_enabled())

    def verifying():
        passed = [verify_model(model, folder, reference="transformers").passed for _ in range(2)]
        done.set()
        return passed

    def watching():
        seen = {state}
        while not done.is_set():
            seen.add((logging.get_verbosity(), logging.is_progress_bar_enabled()))
        return seen

    passed, seen = in_threads(verifying, watching)
    assert passed == [True, True] and seen == {state}


def serial_and_shared(model, jobs):
    """Each job's answer alone, then all of them on 8 threads sharing ``model`` at once."""
    alone = [generate(model, *job[:2], **job[2]) for job in jobs]
    together = in_threads(*(lambda job=job: generate(model, *job[:2], **job[2]) for job in jobs))
    return alone, together


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_eight_threads_sharing_one_model_get_their_serial_continuations(dtype, tmp_path):
    model = load_pretrained(write_layout("hub", tmp_path / "hub"), dtype=dtype)
    prompts = [[5, 6, 7], [1, 2, 3, 4], [9], [100, 200]]
    jobs = [
        ([prompts[0]], 12, {}),  # greedy, batch 1
        ([prompts[1]], 12, {"temperature": 0.8, "top_k": 40, "seed": 1}),  # seeded sampling
        (prompts[:2], 12, {}),  # batched, prompts of two lengths
        (prompts, 8, {"temperature": 1.0, "top_p": 0.9, "seed": 7}),  # batched sampling
        (torch.tensor([prompts[0]]), 12, {}),  # a tensor prompt
        ([prompts[2]], 12, {"temperature": 0.5, "seed": 3}),
        ([prompts[3]], 12, {}),
        (prompts[2:], 10, {"temperature": 1.2, "top_k": 5, "seed": 11}),
    ]
    flags = (torch.get_num_threads(), torch.backends.mkldnn.enabled, current_umask())
    alone, together = serial_and_shared(model, jobs)
    for mine, theirs in zip(alone, together, strict=True):
        assert (mine.tolist() if isinstance(mine, torch.Tensor) else mine) == (
            theirs.tolist() if isinstance(theirs, torch.Tensor) else theirs)
    assert (torch.get_num_threads(), torch.backends.mkldnn.enabled, current_umask()) == flags


def test_threads_loading_converting_and_verifying_at_once_give_the_serial_results(tmp_path):
    import logging as python_logging

    from transformers.utils import logging

    from gpt2port.conversion import convert
    from gpt2port.proof.verification import verify_model

    source = write_layout("hub", tmp_path / "hub")
    ids = torch.tensor([[1, 2, 3, 4, 5]])

    def logits_of(folder):
        with torch.no_grad():
            return load_pretrained(folder)(ids)

    expected = logits_of(source)
    state = (torch.get_num_threads(), torch.backends.mkldnn.enabled, current_umask(),
             logging.get_verbosity(), python_logging.getLogger().level)
    jobs = [lambda: logits_of(source),
            *(lambda to=to: logits_of(convert(source, tmp_path / f"out-{to}", to=to))
              for to in ("hf", "native", "book", "openai", "tlens")),
            lambda: verify_model(load_pretrained(source), source, reference="numpy").passed,
            lambda: verify_model(load_pretrained(source), source, reference="transformers").passed]
    with pytest.warns(UserWarning):  # the conversions' stated changes; none is an error
        results = in_threads(*jobs)
    for found in results[:-2]:
        assert torch.allclose(found, expected, atol=1e-5)
    assert results[-2:] == [True, True]
    assert (torch.get_num_threads(), torch.backends.mkldnn.enabled, current_umask(),
            logging.get_verbosity(), python_logging.getLogger().level) == state
