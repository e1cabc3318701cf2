"""``convert`` between Hugging Face and native layouts, proved by transformers' own reader."""

import itertools
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from checkpoints import load_reference, write_layout
from safetensors.torch import load_file

from gpt2port import load_pretrained
from gpt2port.conversion import ConversionWarning, convert
from gpt2port.errors import OutputError
from gpt2port.formats import BY_NAME, huggingface
from gpt2port.loading import open_checkpoint
from gpt2port.text.tokenizer import BUNDLED

IDS = torch.arange(1, 41).view(2, 20)


def hub_tensors(folder):
    """The weights of a Hugging Face folder without prefix and buffers, as the Hub names them."""
    tensors = huggingface.TABLE.strip_prefix(load_file(folder / "model.safetensors"))
    return {name: t for name, t in tensors.items() if not huggingface.TABLE.is_ignored(name)}


@pytest.mark.parametrize("layout", ["hub", "untied_head", "explicit_tied_head"])
def test_transformers_reads_the_export_bit_identically(layout, tmp_path):
    source = write_layout(layout, tmp_path / layout)
    exported = convert(source, tmp_path / "exported", to="hf")
    with torch.no_grad():
        original = load_reference(source)(IDS).logits
        again = load_reference(exported)(IDS).logits
    assert torch.equal(original, again)


@pytest.mark.parametrize("layout", ["hub", "untied_head"])
def test_hf_to_native_to_hf_is_bit_exact(layout, tmp_path):
    source = write_layout(layout, tmp_path / layout)
    native = convert(source, tmp_path / "native", to="native")
    back = convert(native, tmp_path / "back", to="hf")
    assert load_pretrained(native).config == load_pretrained(source).config
    before, after = hub_tensors(source), hub_tensors(back)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_native_to_hf_to_native_is_bit_exact(tmp_path):
    native = convert(write_layout("hub", tmp_path / "hub"), tmp_path / "native", to="native")
    again = convert(convert(native, tmp_path / "hf", to="hf"), tmp_path / "native2", to="native")
    assert load_file(native / "model.safetensors").keys() == load_file(
        again / "model.safetensors").keys()
    for name, tensor in load_file(native / "model.safetensors").items():
        assert torch.equal(tensor, load_file(again / "model.safetensors")[name])


def test_dtype_conversion(tmp_path):
    out = convert(write_layout("hub", tmp_path / "hub"), tmp_path / "f16", to="hf", dtype="f16")
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float16}
    assert {p.dtype for p in load_pretrained(out).parameters()} == {torch.float16}


def test_an_existing_destination_is_not_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists and is not empty"):
        convert(write_layout("hub", tmp_path / "hub"), tmp_path / "taken", to="hf")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


def test_a_write_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    def fails_after_a_file(model, folder, **options):
        (folder / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(BY_NAME["hf"], "write", fails_after_a_file)
    with pytest.raises(OutputError, match="out: no space left"):
        convert(write_layout("hub", tmp_path / "hub"), tmp_path / "out", to="hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]


def test_convert_command(tmp_path):
    source = write_layout("sharded", tmp_path / "sharded")
    done = subprocess.run([sys.executable, "-m", "gpt2port", "convert", str(source),
                           str(tmp_path / "out"), "--to", "hf"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "config.json, generation_config.json, model.safetensors" in done.stdout
    with torch.no_grad():
        assert torch.equal(load_reference(source)(IDS).logits,
                           load_reference(tmp_path / "out")(IDS).logits)


def converted(source, destination, to):
    """``convert`` with the approximation allowed and its stated changes silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        return convert(source, destination, to=to, approximate_gelu=True)


@pytest.mark.parametrize(("home", "there"), list(itertools.permutations(BY_NAME, 2)))
def test_every_round_trip_keeps_tensors_and_config(home, there, tmp_path):
    """A -> B -> A: every tensor bit-equal in f32, and the config equal to what B holds of it."""
    start = converted(write_layout("hub", tmp_path / "hub"), tmp_path / "a", home)
    back = converted(converted(start, tmp_path / "b", there), tmp_path / "a2", home)
    before, after = open_checkpoint(start), open_checkpoint(back)
    assert before.tensors.keys() == after.tensors.keys()
    for name, tensor in before.tensors.items():
        buffer = before.table.is_ignored(name)  # a causal mask (TransformerLens's is bool)
        assert tensor.dtype == after.tensors[name].dtype == (tensor.dtype if buffer
                                                             else torch.float32)
        assert torch.equal(tensor, after.tensors[name]), name
    original = load_pretrained(start).config
    expected = BY_NAME[home].held_config(BY_NAME[there].held_config(original))
    if there == "nanogpt":  # nanoGPT computes the exact GELU; home approximates it back
        expected = BY_NAME[home].held_config({**expected, "gelu_approximation": "none"})
    assert load_pretrained(back).config == expected


def killed_mid_write(command: list[str], folder: Path) -> list[Path]:
    """Run ``command`` until its partial output in ``folder`` holds a file, stop it (SIGSTOP),
    and kill it (SIGKILL) if the partial is still there, so mid-write; a run that finished
    first is retried. The partial folders it left."""
    for _ in range(5):
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while run.poll() is None and not any(
                any(p.iterdir()) for p in folder.glob(".out.*.partial")):
            time.sleep(0.01)
        run.send_signal(signal.SIGSTOP)
        partials = list(folder.glob(".out.*.partial"))
        run.kill()  # SIGKILL: no cleanup code runs
        run.wait()
        if partials:
            return partials
        shutil.rmtree(folder / "out", ignore_errors=True)  # finished first: try again
    pytest.fail("the conversion finished before it could be stopped, five times")


def test_a_killed_conversion_leaves_no_output_and_the_next_one_cleans_up(
        full_size_hub_folder, tmp_path):
    destination = tmp_path / "out"
    command = [sys.executable, "-m", "gpt2port", "convert", str(full_size_hub_folder),
               str(destination), "--to", "hf"]
    partials = killed_mid_write(command, tmp_path)
    assert partials[0].exists()  # killed mid-write, its temporary folder left
    assert not destination.exists()  # nothing under the final name
    convert(full_size_hub_folder, destination, to="native")
    assert load_pretrained(destination).config["number_of_layers"] == 12
    assert not list(tmp_path.glob(".out.*.partial"))  # the killed run's folder is gone


@pytest.mark.parametrize("to", ["hf", "openai", "native", "gguf"])
def test_a_full_disk_gives_our_error_and_no_output(to, tmp_path):
    source = write_layout("hub", tmp_path / "hub", n_embd=128)  # ~1.6 MB of weights

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    done = subprocess.run([sys.executable, "-m", "gpt2port", "convert", str(source),
                           str(tmp_path / "out"), "--to", to], capture_output=True, text=True,
                          preexec_fn=small_disk, check=False)
    assert done.returncode == 7, done.stderr
    assert "no space left" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]  # no output, no partial folder


@pytest.mark.parametrize("name", ["out", "model.gguf"])
def test_two_conversions_racing_into_one_destination(name, tmp_path):
    """One output, whole; the other run ends in exit 7 naming the destination as given, in
    whatever order the two reach it (three rounds)."""
    source = write_layout("hub", tmp_path / "hub", n_embd=128)
    to = "gguf" if name.endswith(".gguf") else "hf"
    for round_ in range(3):
        destination = tmp_path / f"round{round_}" / name
        runs = [subprocess.Popen([sys.executable, "-m", "gpt2port", "convert", str(source),
                                  str(destination), "--to", to], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outcomes = sorted((run.wait(timeout=300), run.stderr.read()) for run in runs)
        assert [code for code, _ in outcomes] == [0, 7], outcomes
        lost = outcomes[1][1]
        assert lost.startswith(f"error: {destination}: already exists") and ".partial" not in lost
        assert sorted(p.name for p in destination.parent.iterdir()) == [name]  # no partial
        load_pretrained(destination)


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs, mounted for the test (root only: CI runs as root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    place = tmp_path / "small"
    place.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(place)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield place
    subprocess.run(["umount", str(place)], check=False)


@pytest.mark.parametrize("to", [*BY_NAME, "gguf-file"])
def test_a_disk_that_fills_up_names_the_destination_and_the_space(to, small_disk, tmp_path):
    source = write_layout("hub", tmp_path / "hub", n_embd=128)  # ~1.6 MB of weights
    destination = small_disk / ("model.gguf" if to == "gguf-file" else "out")
    done = subprocess.run([sys.executable, "-m", "gpt2port", "convert", str(source),
                           str(destination), "--to", to.removesuffix("-file")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 7, done.stderr
    error = done.stderr.splitlines()[-2]
    assert error.startswith(f"error: {destination}: no space left to write it: it needs about ")
    assert "MiB are free there" in error and "Traceback" not in done.stderr
    assert list(small_disk.iterdir()) == []  # no output, no partial output


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.filterwarnings("ignore::gpt2port.conversion.ConversionWarning")  # see test_other_projects
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("to", list(BY_NAME))
def test_outputs_get_the_permissions_the_umask_gives(to, mask, umask, tmp_path):
    """As any new file would: another user, a container or a web server can read a 022 export."""
    source = write_layout("hub", tmp_path / "hub")
    umask(mask)
    out = convert(source, tmp_path / "out", to=to)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    files = [p for p in out.rglob("*")]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == (0o777 if p.is_dir() else 0o666)
                         & ~mask for p in files)


def test_an_existing_empty_destination_keeps_readable_permissions(umask, tmp_path):
    (tmp_path / "out").mkdir()
    umask(0o022)
    out = convert(write_layout("hub", tmp_path / "hub"), tmp_path / "out", to="native")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644


def test_sigterm_removes_the_partial_output(full_size_hub_folder, tmp_path):
    """``kill``, ``timeout`` and a container stop send SIGTERM: handled like Ctrl-C. The process
    is stopped (SIGSTOP) once its partial output appears; only if the partial is still there is
    it known to be mid-write, and then it gets SIGTERM (a run that finished first is retried)."""
    for trial in range(5):
        folder = tmp_path / str(trial)
        folder.mkdir()
        command = [sys.executable, "-m", "gpt2port", "convert", str(full_size_hub_folder),
                   str(folder / "out"), "--to", "hf"]
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        while run.poll() is None and not list(folder.glob(".out.*.partial")):
            time.sleep(0.01)
        run.send_signal(signal.SIGSTOP)
        writing = bool(list(folder.glob(".out.*.partial")))
        if writing:
            run.terminate()  # SIGTERM, mid-write
        run.send_signal(signal.SIGCONT)
        _, stderr = run.communicate(timeout=60)
        if writing:
            assert run.returncode == 143 and stderr == "terminated\n", stderr
            assert list(folder.iterdir()) == []  # neither the output nor its partial folder
            return
        assert [path.name for path in folder.iterdir()] == ["out"]  # finished: whole, alone
    pytest.fail("the conversion finished before it could be stopped, five times")


def test_partial_outputs_of_dead_processes_go_from_any_later_write_beside_them(tmp_path):
    """A run killed with SIGKILL cannot clean up; the next write into the same folder does,
    whatever it writes there, and leaves running processes' partial outputs alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    stale = [tmp_path / f".old.{pid}.abc123.partial", tmp_path / f".x.y.gguf.{pid}.q_9.partial"]
    stale[0].mkdir()
    (stale[0] / "model.safetensors").write_bytes(b"half")
    stale[1].write_bytes(b"half a file")
    alive = tmp_path / f".busy.{os.getpid()}.zz.partial"
    alive.mkdir()
    source = write_layout("hub", tmp_path / "hub")
    convert(source, tmp_path / "new.gguf", to="gguf")
    assert not any(path.exists() for path in stale)
    assert alive.exists()


def test_hf_export_has_what_save_pretrained_writes(tmp_path):
    """transformers reads the export's generation settings and tokenizer as its own."""
    from transformers import AutoTokenizer, GenerationConfig

    source = write_layout("hub", tmp_path / "hub", vocab_size=50257, bos_token_id=50256,
                          eos_token_id=50256)
    for name in ("vocab.json", "merges.txt"):
        (source / name).write_bytes((BUNDLED / name).read_bytes())
    out = convert(source, tmp_path / "hf", to="hf")
    settings = GenerationConfig.from_pretrained(out)
    assert settings.eos_token_id == settings.bos_token_id == 50256
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.encode("Hello world<|endoftext|>") == [15496, 995, 50256]
