"""The Python API is the command line's equal, and safe at every door: hostile arguments a user
can type end in a result (the regular path's, where the compiled step answers) or gpt2port's own
error, never another exception, never a signal. Each call runs in a child process
(``api_worker.py``), so a crash is seen as the signal it is."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import write_layout
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import gpt2port

WORKER = Path(__file__).with_name("api_worker.py")
OUTPUT_NUMBERS = itertools.count()  # a new destination for each conversion
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


class Worker:
    """One child process answering calls; started again after a call that ends it."""

    def __init__(self, folder: Path, outputs: Path, cache: Path):
        self.arguments = [sys.executable, str(WORKER), str(folder), str(outputs)]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(cache),
                    "PYTHONPATH": os.pathsep.join(filter(None, [
                        str(WORKER.parent), os.environ.get("PYTHONPATH")]))}
        self.process = None

    def call(self, expression: str, regular: str | None = None) -> dict:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(self.arguments, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True, env=self.env)
        self.process.stdin.write(json.dumps({"expression": expression,
                                             "regular": regular}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            pytest.fail(f"{expression}: the process ended with {code} (a signal when negative)")
        return json.loads(line)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    folder = write_layout("hub", tmp_path_factory.mktemp("api") / "tiny")
    found = Worker(folder, tmp_path_factory.mktemp("outputs"), tmp_path_factory.mktemp("cache"))
    yield found
    found.close()


def accepted(answer: dict, expression: str) -> None:
    """A result, or gpt2port's own error in one line with a hint; never anything else."""
    assert "bug" not in answer, f"{expression} raised {answer['bug']}"
    if "error" in answer:  # the worker caught it as a gpt2port.Gpt2portError
        assert "\n" not in answer["message"] and answer["hint"], answer


# --- hostile arguments, as expressions the worker evaluates
WHOLE = st.integers(-5, 1100) | st.integers(-2**70, 2**70)
ELEMENT = WHOLE | st.floats(allow_nan=True) | st.booleans() | st.none() | st.text(max_size=2)
LISTS = st.lists(st.lists(ELEMENT, max_size=4), max_size=3).map(repr)


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(["long", "int32", "int16", "uint8", "float32", "bool"]))
    rows, columns = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    low, high = (0, 255) if dtype == "uint8" else (-5, 1100)
    values = [[draw(st.integers(low, high)) for _ in range(columns)] for _ in range(rows)]
    shape = draw(st.sampled_from(["", ".flatten()", "[None]"]))
    return f"torch.tensor({values}, dtype=torch.{dtype}).reshape({rows}, {columns}){shape}"


VALID = st.lists(st.lists(st.integers(0, 999), min_size=1, max_size=4), min_size=1,
                 max_size=3).map(repr)
IDS = VALID | LISTS | tensors() | st.sampled_from(["'hello'", "None", "3", "{1: 2}", "[[1, 2], [3]]",
                                           "[[999]]", "[[0]]", "[(1, 2)]"])
COUNT = st.integers(0, 4) | st.integers(-3, 4) | st.sampled_from([2.5, None, True, "3"])
TEMPERATURE = (st.just(0.0) | st.just(0.0) | st.floats(-1, 3)
               | st.sampled_from([float("nan"), float("inf"), None, "hot"]))
TOP_K = st.none() | st.integers(-2, 2000) | st.just(1.5)
TOP_P = st.none() | st.floats(-0.5, 1.5) | st.just(float("nan"))
SEED = st.none() | st.integers(-5, 2**64) | st.just(1.5)
MODEL = st.sampled_from(["fp32", "bf16", "fp16"])


@settings(SETTINGS, max_examples=200)
@given(model=MODEL, ids=IDS, count=COUNT, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P,
       seed=SEED, compile=st.booleans(), streamed=st.booleans())
def test_generation_given_anything(worker, model, ids, count, temperature, top_k, top_p, seed,
                                   compile, streamed):
    options = (f"temperature={temperature!r}, top_k={top_k!r}, top_p={top_p!r}, "
               f"seed={seed!r}").replace("nan", "float('nan')").replace("inf", "float('inf')")
    call = "list(stream({}))" if streamed else "generate({})"
    expression = call.format(f"models[{model!r}], {ids}, {count!r}, {options}, "
                             f"compile={compile}")
    regular = None
    if compile and model == "fp32" and temperature == 0.0:
        regular = expression.replace("compile=True", "compile=False")
    answer = worker.call(expression, regular)
    accepted(answer, expression)
    event(answer.get("error", "result"))
    if regular is not None and "error" not in answer:
        assert answer["regular"] == {k: v for k, v in answer.items() if k != "regular"}, (
            f"{expression}: the compiled step and the regular path differ")


@settings(SETTINGS, max_examples=100)
@given(model=MODEL, ids=VALID, count=st.integers(0, 4), compile=st.booleans(),
       temperature=st.just(0.0) | st.floats(0.1, 2), top_k=st.none() | st.integers(1, 1500),
       top_p=st.none() | st.floats(0.01, 1), seed=st.none() | st.integers(0, 2**63 - 1))
def test_generation_within_bounds_gives_tokens(worker, model, ids, count, compile, temperature,
                                               top_k, top_p, seed):
    expression = (f"generate(models[{model!r}], {ids}, {count}, temperature={temperature!r}, "
                  f"top_k={top_k!r}, top_p={top_p!r}, seed={seed!r}, compile={compile})")
    regular = None
    if compile and model == "fp32" and temperature == 0.0:
        regular = expression.replace("compile=True", "compile=False")
    answer = worker.call(expression, regular)
    assert "value" in answer, f"{expression}: {answer}"
    prompts = eval(ids)
    for prompt, produced in zip(prompts, answer["value"], strict=True):
        assert produced[:len(prompt)] == prompt and len(produced) == len(prompt) + count
        assert all(0 <= token < 1000 for token in produced)
    if regular is not None:
        assert answer["regular"]["value"] == answer["value"], expression


NAMES = st.sampled_from(["folder", "str(folder)", "'gpt-2'", "''", "None", "5", "b'x'",
                         "'../nope'", "'a/b/c'", "'\\x00'", "'x' * 300", "'owner/name'",
                         "folder / 'model.safetensors'", "folder / 'config.json'", "['gpt2']"])
DTYPES = st.sampled_from(["None", "'fp16'", "'float8'", "5", "torch.int64", "torch.float16"])
DEVICES = st.sampled_from(["'cpu'", "'tpu'", "'cuda'", "'cuda:7'", "''", "None", "3", "'meta'",
                           "torch.device('cpu')", "'cpu:0'"])
TEXTS = st.sampled_from(["None", "''", "' '", "'a'", "5", "'\\x00'", "'<|endoftext|>'",
                         "'hello world ' * 3", "b'bytes'", "'\\ud800 x'"])


@SETTINGS
@given(name=NAMES, dtype=DTYPES, device=DEVICES)
def test_loading_given_anything(worker, name, dtype, device):
    expression = f"load_pretrained({name}, dtype={dtype}, device={device})"
    accepted(worker.call(expression), expression)


@SETTINGS
@given(name=NAMES, text=TEXTS, path=NAMES, reference=st.sampled_from(
    ["'numpy'", "'tf'", "None", "5"]), which=st.sampled_from(["compare", "verify", "tokenizer",
                                                              "inspect"]))
def test_proof_and_listing_given_anything(worker, name, text, path, reference, which):
    expression = {"compare": f"compare(folder, {name}, text={text}, tokenizer={path})",
                  "verify": f"verify({name}, reference={reference}, text={text}, "
                            f"tokenizer={path})",
                  "tokenizer": f"load_tokenizer({path})",
                  "inspect": f"inspect({name}, tokenizer={path})"}[which]
    accepted(worker.call(expression), expression)


@SETTINGS
@given(name=NAMES, to=st.sampled_from(["'hf'", "'gguf'", "'native'", "'nope'", "None", "5",
                                       "'HF'"]),
       dtype=st.sampled_from(["None", "'f16'", "'q4'", "5"]),
       destination=st.sampled_from(["new", "None", "''", "folder", "'/proc/nope/x'"]))
def test_conversion_given_anything(worker, name, to, dtype, destination):
    if destination == "new":
        destination = f"outputs / 'out{next(OUTPUT_NUMBERS)}'"
    expression = f"convert({name}, {destination}, to={to}, dtype={dtype}, tokenizer={name})"
    accepted(worker.call(expression), expression)


# --- the calls the issue names, each with what it now gives
@pytest.mark.parametrize("expression, error, says", [
    ("generate(models['fp32'], [[60000]], 3, compile=True)", "ConfigError",
     "token id 60000 is outside the model's vocabulary (0 to 999)"),
    ("generate(models['fp32'], [[1000]], 3, compile=True)", "ConfigError",
     "token id 1000 is outside"),
    ("generate(models['bf16'], [[-1]], 3, compile=True)", "ConfigError", "token id -1 is outside"),
    ("generate(models['fp32'], [[1000]], 3)", "ConfigError", "token id 1000 is outside"),
    ("load_pretrained(folder, device='tpu')", "ConfigError", "device 'tpu': not a device torch"),
    ("load_pretrained(folder, device='meta')", "ConfigError", "gpt2port runs on cpu, cuda or mps"),
    ("compare(folder, folder, text='')", "ConfigError", "encodes to 0 token(s)"),
    ("generate(models['fp32'], [[1.5]], 3)", "ConfigError", "whole numbers"),
])
def test_the_calls_that_crashed_or_raised_torchs_errors(worker, expression, error, says):
    answer = worker.call(expression)
    assert answer.get("error") == error and says in answer["message"], answer


def test_the_api_does_what_the_commands_do(tiny_hub_folder, tmp_path, capsys):
    from gpt2port import cli, convert, inspect, verify

    assert cli.main(["inspect", str(tiny_hub_folder)]) == 0
    assert capsys.readouterr().out == inspect(tiny_hub_folder) + "\n"
    result = verify(tiny_hub_folder, reference="numpy")
    assert result.passed and "PASSED" in result.report()
    written = convert(tiny_hub_folder, tmp_path / "gguf", to="gguf")
    assert verify(written, reference="numpy").passed


def test_every_public_function_documents_what_it_raises():
    for name in gpt2port.__all__:
        found = getattr(gpt2port, name)
        if callable(found) and not isinstance(found, type) and name != "validate_config":
            assert "Raises:" in (found.__doc__ or ""), name
