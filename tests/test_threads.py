"""gpt2port changes nothing another thread can see: layers built meanwhile are initialised,
torch's flags and the umask stay as they were, and two generations at once each get their own
serial answer. Every check counts outcomes, never time: it holds however busy the machine is."""

import math
import os
import threading

import torch
from checkpoints import write_layout

from gpt2port import generate, load_pretrained
from gpt2port.files import current_umask


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

    from gpt2port.verification import verify

    folder = write_layout("hub", tmp_path / "hub")
    model, done = load_pretrained(folder), threading.Event()
    state = (logging.get_verbosity(), logging.is_progress_bar_enabled())

    def verifying():
        passed = [verify(model, folder, reference="transformers").passed for _ in range(2)]
        done.set()
        return passed

    def watching():
        seen = {state}
        while not done.is_set():
            seen.add((logging.get_verbosity(), logging.is_progress_bar_enabled()))
        return seen

    passed, seen = in_threads(verifying, watching)
    assert passed == [True, True] and seen == {state}
