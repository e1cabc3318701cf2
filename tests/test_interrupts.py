"""Ctrl-C and SIGTERM at every phase of every long command: ``interrupted`` / ``terminated``,
exit 130 / 143, nothing partial left, never another error and never an abort.

The signal is sent when the command says it has reached the phase (``GPT2PORT_PHASES=1``
prints ``phase: NAME`` on stderr), not after a guessed delay, so a busy machine changes only
how far into the phase the signal lands. A command may also have finished the phase's work
by then: the only outcomes accepted are the signal's exit status and a clean finish.
"""

import os
import shutil
import signal
import subprocess
import sys

import pytest
from checkpoints import write_layout
from stand_in_hub import StandInHub
from test_download import REPO, cache_files, with_tokenizer

STATUS = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}
SIGNALS = [signal.SIGINT, signal.SIGTERM]


def stop_at(arguments, phase, number, env=None):
    """Run the CLI, send signal ``number`` once it says ``phase: <phase>``; its exit status and
    what it wrote on stderr after the phase markers."""
    run = subprocess.Popen([sys.executable, "-m", "gpt2port", *arguments], text=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env={**(env or os.environ), "GPT2PORT_PHASES": "1"})
    seen = []
    for line in run.stderr:
        seen.append(line.rstrip("\n"))
        if line.strip() == f"phase: {phase}":
            run.send_signal(number)
            break
    rest = run.stderr.read()
    run.wait(timeout=300)
    said = [line for line in [*seen, *rest.splitlines()] if not line.startswith("phase: ")]
    assert f"phase: {phase}" in seen, f"never reached {phase}: {seen} {rest}"
    return run.returncode, said


def assert_stopped_or_finished(code, said, number):
    """Only the signal's status with its one line, or a finished command (exit 0)."""
    status, word = STATUS[number]
    assert code in (status, 0), (code, said)
    assert not any("Traceback" in line or line.startswith("error:") for line in said), said
    if code == status:
        assert said[-1] == word, said


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    from conftest import GPT2Config, GPT2LMHeadModel, torch, write_hub_layout
    torch.manual_seed(0)
    return write_hub_layout(GPT2LMHeadModel(GPT2Config()).eval(),
                            tmp_path_factory.mktemp("gpt2-124m"))


@pytest.mark.parametrize("number", SIGNALS)
@pytest.mark.parametrize("phase", ["importing", "reading", "writing"])
def test_convert_stopped_at_any_phase_leaves_nothing(phase, number, full_size, tmp_path):
    out = tmp_path / "place"
    out.mkdir()
    code, said = stop_at(["convert", str(full_size), str(out / "hf"), "--to", "hf"], phase,
                         number)
    assert_stopped_or_finished(code, said, number)
    left = sorted(p.name for p in out.iterdir())
    assert left == ([] if code else ["hf"]), left  # no output and no partial one


@pytest.fixture
def slow_hub(tmp_path):
    """A stand-in Hub whose file downloads wait 2 s before the body."""
    folder = with_tokenizer(write_layout("hub", tmp_path / "repo", vocab_size=50257,
                                         eos_token_id=50256, bos_token_id=50256))
    with StandInHub() as hub:
        hub.add_repo(REPO, folder)
        hub.faults.delay = 2.0
        yield {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "home"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_ETAG_TIMEOUT": "10",
               "HF_HUB_DOWNLOAD_TIMEOUT": "10"}


@pytest.mark.parametrize("number", SIGNALS)
@pytest.mark.parametrize("phase", ["importing", "downloading", "loading", "numpy reference"])
def test_download_stopped_at_any_phase_is_never_a_network_error(phase, number, slow_hub):
    code, said = stop_at(["download", REPO, "--reference", "numpy"], phase, number, slow_hub)
    assert_stopped_or_finished(code, said, number)
    assert not [path for path in cache_files(slow_hub) if path.endswith(".incomplete")]


@pytest.mark.parametrize("number", SIGNALS)
@pytest.mark.parametrize("phase", ["importing", "resolving", "loading", "generating"])
def test_generate_stopped_at_any_phase(phase, number, tmp_path):
    model = with_tokenizer(write_layout("hub", tmp_path / "model", vocab_size=50257,
                                        eos_token_id=50256, bos_token_id=50256))
    code, said = stop_at(["generate", str(model), "The dog", "--max-new-tokens", "2000"], phase,
                         number)
    assert_stopped_or_finished(code, said, number)
    if phase == "generating":  # 2,000 tokens take far longer than a signal's delivery
        assert code == STATUS[number][0], said


def test_the_sweep_interrupts_while_torch_imports():
    """The phase that once aborted (pybind11's error_already_set): always stopped cleanly."""
    outcomes = [stop_at(["inspect", "gpt2"], "importing", signal.SIGINT) for _ in range(3)]
    assert all(code == 130 and said == ["interrupted"] for code, said in outcomes), outcomes


def test_nothing_is_left_of_a_stopped_gguf_file(full_size, tmp_path):
    pytest.importorskip("gguf")
    code, said = stop_at(["convert", str(full_size), str(tmp_path / "model.gguf"), "--to",
                          "gguf"], "writing", signal.SIGINT)
    assert_stopped_or_finished(code, said, signal.SIGINT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if code else ["model.gguf"])
    shutil.rmtree(tmp_path, ignore_errors=True)
