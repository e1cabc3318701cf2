"""Every subcommand, driven through a table of bad inputs in a subprocess as a user runs it: each
ends in gpt2port's own error (``error:`` and ``hint:`` lines, the documented exit code), never a
traceback, and writes nothing."""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from checkpoints import write_layout

from gpt2port.text.tokenizer import BUNDLED

FORMAT_FILES = {  # a file name each format claims, filled with random bytes
    "hf": "model.safetensors", "native": "model.safetensors", "gguf": "model.gguf",
    "llmc": "gpt2_124M.bin", "nanogpt": "ckpt.pt", "book": "model.pth",
    "openai": "model.ckpt.index",
}
HELP = "hint: gpt2port"  # argparse mistakes: the usage line, then this hint

# (name, arguments with {place} for the work folder, exit code, a line stderr must hold)
CASES = [
    ("no command", [], 2, "arguments are required"),
    ("unknown command", ["fetch"], 2, "invalid choice: 'fetch'"),
    # verify
    ("verify: relative path that does not exist", ["verify", "./does-not-exist"], 4,
     "./does-not-exist: no such file or folder"),
    ("verify: absolute path that does not exist", ["verify", "{place}/nothing/here"], 4,
     "the folder {place}/nothing does not exist"),
    ("verify: misspelled folder", ["verify", "{place}/modle"], 4, "did you mean {place}/model?"),
    ("verify: misspelled preset", ["verify", "gpt-2"], 4, "did you mean gpt2?"),
    ("verify: preset in capitals", ["verify", "GPT2"], 4, "did you mean gpt2?"),
    ("verify: weights file name that does not exist", ["verify", "model.safetensors"], 4,
     "model.safetensors: no such file or folder"),
    ("verify: repo id with too many parts", ["verify", "a/b/c"], 4, "no such file or folder"),
    ("verify: repo not cached, offline", ["verify", "someone/unknown"], 11,
     "not in the cache, and offline mode is on"),
    ("verify: empty folder", ["verify", "{place}/empty"], 4, "the folder is empty"),
    ("verify: config with n_head 7", ["verify", "{place}/seven heads"], 3,
     "n_head=7 does not divide n_embd=64"),
    ("verify: config that is not JSON", ["verify", "{place}/broken config"], 4,
     "config.json: not valid JSON"),
    ("verify: transformers asked for on a GGUF", ["verify", "{place}/model.gguf",
                                                   "--reference", "transformers"], 3,
     "transformers reads Hugging Face folders of PyTorch weights only"),
    ("verify: unknown reference", ["verify", "{place}/model", "--reference", "tf"], 2,
     "invalid choice: 'tf'"),
    ("verify: unreadable weights", ["verify", "{place}/locked"], 4, "Permission denied"),
    ("verify: a path with spaces", ["verify", "{place}/with space/model"], 0, None),
    # generate
    ("generate: CUDA on a machine without it", ["generate", "{place}/model", "x", "--device",
                                                "cuda"], 3, "install the CUDA build of torch"),
    ("generate: unknown device", ["generate", "{place}/model", "x", "--device", "tpu9"], 3,
     "device 'tpu9': not a device torch knows"),
    ("generate: negative max new tokens", ["generate", "{place}/model", "x",
                                           "--max-new-tokens", "-1"], 2,
     "argument --max-new-tokens: '-1' is not a whole number of 0 or more"),
    ("generate: max new tokens not a number", ["generate", "{place}/model", "x",
                                               "--max-new-tokens", "ten"], 2,
     "'ten' is not a whole number"),
    ("generate: top-k 0", ["generate", "{place}/model", "x", "--top-k", "0"], 2,
     "argument --top-k: '0' is not a whole number of 1 or more"),
    ("generate: negative temperature", ["generate", "{place}/model", "x", "--temperature",
                                        "-1"], 2, "argument --temperature: '-1' is not"),
    ("generate: temperature nan", ["generate", "{place}/model", "x", "--temperature", "nan"], 2,
     "argument --temperature: 'nan' is not"),
    ("generate: top-p 2", ["generate", "{place}/model", "x", "--top-p", "2"], 2,
     "argument --top-p: '2' is not a number in (0, 1]"),
    ("generate: top-p 0", ["generate", "{place}/model", "x", "--top-p", "0"], 2,
     "argument --top-p: '0' is not a number in (0, 1]"),
    ("generate: negative seed", ["generate", "{place}/model", "x", "--seed", "-5"], 2,
     "argument --seed: '-5' is not"),
    ("generate: seed past 64 bits", ["generate", "{place}/model", "x", "--seed", str(2**70)], 2,
     "argument --seed"),
    ("generate: unknown dtype", ["generate", "{place}/model", "x", "--dtype", "float8"], 2,
     "invalid choice: 'float8'"),
    ("generate: no prompt", ["generate", "{place}/model"], 2, "arguments are required: prompt"),
    ("generate: random bytes as weights", ["generate", "{place}/random/hf", "x"], 4,
     "model.safetensors"),
    ("generate: an empty prompt", ["generate", "{place}/model", "", "--max-new-tokens", "3"], 0,
     "[1 prompt tokens, 3 new tokens"),
    ("generate: more new tokens than the context", ["generate", "{place}/model", "The dog",
                                                    "--max-new-tokens", "80"], 0,
     "[2 prompt tokens, 80 new tokens"),
    ("generate: a path with spaces", ["generate", "{place}/with space/model", "a b",
                                      "--max-new-tokens", "2", "--temperature", "0.7",
                                      "--top-k", "5", "--top-p", "0.9", "--seed", "1"], 0,
     "2 new tokens"),
    # convert
    ("convert: no --to", ["convert", "{place}/model", "{place}/out"], 2,
     "arguments are required: --to"),
    ("convert: unknown format", ["convert", "{place}/model", "{place}/out", "--to",
                                 "torchscript"], 2, "invalid choice: 'torchscript'"),
    ("convert: dtype the format does not store", ["convert", "{place}/model", "{place}/out",
                                                  "--to", "hf", "--dtype", "q8_0"], 3,
     "hf does not store q8_0"),
    ("convert: f16 into llm.c", ["convert", "{place}/model", "{place}/out", "--to", "llmc",
                                 "--dtype", "f16"], 3, "llmc does not store f16"),
    ("convert: source that does not exist", ["convert", "./nope", "{place}/out", "--to", "hf"],
     4, "./nope: no such file or folder"),
    ("convert: destination not empty", ["convert", "{place}/model", "{place}/model", "--to",
                                        "hf"], 7, "already exists and is not empty"),
    ("convert: destination is a file", ["convert", "{place}/model", "{place}/model.gguf",
                                        "--to", "gguf"], 7, "model.gguf: already exists"),
    ("convert: destination under a file", ["convert", "{place}/model",
                                           "{place}/model/config.json/out", "--to", "hf"], 7,
     "cannot write there"),
    ("convert: destination in a read-only folder", ["convert", "{place}/model",
                                                    "{place}/read-only/out", "--to", "hf"], 7,
     "cannot write there (Permission denied)"),
    ("convert: random bytes as weights", ["convert", "{place}/random/gguf/model.gguf",
                                          "{place}/out", "--to", "hf"], 4,
     "not a readable GGUF file"),
    ("convert: a path with spaces", ["convert", "{place}/with space/model",
                                     "{place}/with space/out.gguf", "--to", "gguf"], 0, None),
    # inspect
    ("inspect: empty folder", ["inspect", "{place}/empty"], 4, "the folder is empty"),
    ("inspect: folder of other files", ["inspect", "{place}/other"], 4,
     "no checkpoint of a known format; the folder has notes.txt"),
    ("inspect: not a checkpoint", ["inspect", "{place}/other/notes.txt"], 4,
     "not a checkpoint file of a known format"),
    ("inspect: missing path", ["inspect", "missing.pth"], 4, "no such file or folder"),
    # download
    ("download: relative path", ["download", "./folder"], 4, "./folder: no such file or folder"),
    ("download: a local folder", ["download", "{place}/model"], 3,
     "a local path; download fetches from the Hub"),
    ("download: misspelled preset", ["download", "gpt2-mediun"], 4,
     "did you mean gpt2-medium?"),
    ("download: not cached, offline", ["download", "someone/unknown"], 11,
     "not in the cache, and offline mode is on"),
    ("download: OpenAI size never released", ["download", "999M", "--source", "openai"], 3,
     "no OpenAI release named '999M'"),
    ("download: OpenAI release offline", ["download", "124M", "--source", "openai",
                                          "--offline", "--cache-dir", "{place}/cache"], 11,
     "OpenAI's 124M release is not downloaded"),
    ("download: unknown source", ["download", "--source", "s3"], 2, "invalid choice: 's3'"),
]
CASES += [(f"{command}: random bytes under {name}'s file name",
           [command, f"{{place}}/random/{name}/{file}"], 4, "hint:")
          for command in ("verify", "inspect") for name, file in FORMAT_FILES.items()]
CASES += [(f"verify: random bytes in a {name} folder", ["verify", f"{{place}}/random/{name}"],
           4, "hint:") for name in FORMAT_FILES]


def _without_root_powers() -> list[str]:
    """Root reads and writes through any permission: drop those two powers (setpriv), so the
    unreadable-file and read-only-folder cases mean what they say."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission cases cannot be made")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """The files the cases name: a small model with GPT-2's vocabulary and tokenizer, and the
    damaged, empty, locked and read-only paths."""
    place = tmp_path_factory.mktemp("cli")
    model = write_layout("hub", place / "model", vocab_size=50257, bos_token_id=50256,
                         eos_token_id=50256)
    for name in ("vocab.json", "merges.txt"):
        (model / name).write_bytes((BUNDLED / name).read_bytes())
    shutil.copytree(model, place / "with space" / "model")
    (place / "empty").mkdir()
    (place / "other").mkdir()
    (place / "other" / "notes.txt").write_text("not a model")
    shutil.copytree(model, place / "seven heads")
    config = (model / "config.json").read_text().replace('"n_head": 4', '"n_head": 7')
    (place / "seven heads" / "config.json").write_text(config)
    shutil.copytree(model, place / "broken config")
    (place / "broken config" / "config.json").write_text('{"n_head": ')
    subprocess.run([sys.executable, "-m", "gpt2port", "convert", str(model),
                    str(place / "model.gguf"), "--to", "gguf"], check=True,
                   capture_output=True)
    shutil.copytree(model, place / "locked")
    (place / "locked" / "model.safetensors").chmod(0)
    (place / "read-only").mkdir()
    (place / "read-only").chmod(0o555)
    random = __import__("random").Random(0)
    for name, file in FORMAT_FILES.items():
        folder = place / "random" / name
        folder.mkdir(parents=True)
        (folder / file).write_bytes(random.randbytes(4096))
        if name in ("hf", "native"):
            (folder / "config.json").write_bytes((model / "config.json").read_bytes())
        if name == "openai":
            (folder / "hparams.json").write_text('{"n_vocab": 50257, "n_ctx": 64, "n_embd": 64, '
                                                 '"n_head": 4, "n_layer": 2}')
    return place


@pytest.fixture(scope="module")
def outcomes(place):
    """Every case run at once (two at a time per core), in a clean offline Hub cache."""
    env = {**os.environ, "HF_HOME": str(place / "hf-home"), "HF_HUB_OFFLINE": "1"}
    before = sorted(p.relative_to(place) for p in place.rglob("*"))

    prefix = [*_without_root_powers(), sys.executable, "-m", "gpt2port"]

    def run(case):
        arguments = [a.replace("{place}", str(place)) for a in case[1]]
        return subprocess.run([*prefix, *arguments], capture_output=True, text=True, env=env,
                              cwd=place / "empty", timeout=300, check=False)

    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
        done = dict(zip((case[0] for case in CASES), pool.map(run, CASES), strict=True))
    made = {"with space/out.gguf"}  # the one case that writes: its output, nothing else
    after = sorted(p.relative_to(place) for p in place.rglob("*")
                   if not str(p.relative_to(place)).startswith("hf-home"))
    assert sorted(map(str, after)) == sorted({*map(str, before), *made})
    return done


@pytest.mark.parametrize(("name", "arguments", "code", "said"), CASES,
                         ids=[case[0] for case in CASES])
def test_bad_input_gets_our_error(outcomes, place, name, arguments, code, said):
    done = outcomes[name]
    stderr = done.stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert done.returncode == code, stderr
    lines = stderr.splitlines()
    if code:
        errors = [line for line in lines if line.startswith("error: ")]
        hints = [line for line in lines if line.startswith("hint: ")]
        assert len(errors) == 1 and len(hints) == 1, stderr
        assert lines.index(hints[0]) == lines.index(errors[0]) + 1  # the hint follows
        if code == 2:
            assert hints[0].startswith(HELP)
    if said is not None:
        assert said.replace("{place}", str(place)) in stderr
    assert "\r" not in stderr  # no progress bars: stderr is not a terminal


def test_generate_stops_quietly_when_its_reader_goes_away(place):
    """``generate ... | head -c 20``: the reader closes the pipe; no BrokenPipeError."""
    run = subprocess.Popen([sys.executable, "-m", "gpt2port", "generate", str(place / "model"),
                            "The dog", "--max-new-tokens", "400"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert run.stdout.read(20)
    run.stdout.close()
    stderr = run.stderr.read().decode()
    assert run.wait(timeout=120) == 141
    assert stderr == "", stderr


def test_generate_prints_a_summary_on_stderr_only(place):
    done = subprocess.run([sys.executable, "-m", "gpt2port", "generate", str(place / "model"),
                           "The dog", "--max-new-tokens", "5"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("The dog") and "tokens/s" not in done.stdout
    summary = done.stderr.strip()
    assert summary.startswith("[2 prompt tokens, 5 new tokens, ") and summary.endswith(
        "tokens/s on cpu]"), summary


def test_version():
    done = subprocess.run([sys.executable, "-m", "gpt2port", "--version"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0 and done.stdout.startswith("gpt2port 0.")


def test_verify_prints_only_its_own_report(place):
    """transformers' load report and progress bar are silenced: stdout is gpt2port's report,
    stderr is empty."""
    done = subprocess.run([sys.executable, "-m", "gpt2port", "verify", str(place / "model"),
                           "--reference", "transformers"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines()[0] == "reference: transformers GPT2LMHeadModel"
    assert done.stdout.splitlines()[-1] == "PASSED"
