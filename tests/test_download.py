"""``gpt2port`` end to end against the stand-in Hub: download, verify, generate, and each failure."""

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from checkpoints import write_layout
from other_projects import the_book
from safetensors.torch import save_file
from stand_in_hub import StandInHub

from gpt2port.config import PRESETS
from gpt2port.text.tokenizer import BUNDLED

REPO = "test-org/tiny-gpt2"
GPT2 = PRESETS["gpt2"]


def with_tokenizer(folder):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(BUNDLED / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("repo") / "tiny"
    return with_tokenizer(write_layout("hub", folder, vocab_size=50257, eos_token_id=50256,
                                       bos_token_id=50256))


@pytest.fixture
def hub(tiny_repo):
    with StandInHub() as hub:
        hub.add_repo(REPO, tiny_repo)
        yield hub


@pytest.fixture
def env(hub, tmp_path):
    return {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_ETAG_TIMEOUT": "5",
            "HF_HUB_DOWNLOAD_TIMEOUT": "5"}


def gpt2port(*args, env, limit_file_size=None, timeout=300):
    """Run the CLI in a fresh process, as a user would."""
    def limit():
        if limit_file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))
    return subprocess.run([sys.executable, "-m", "gpt2port", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, preexec_fn=limit, check=False)


def gpt2port_at_once(*args, env, processes=2, timeout=300):
    """Run the same command in several processes at the same time: (exit code, out, err) each."""
    runs = [subprocess.Popen([sys.executable, "-m", "gpt2port", *args], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(processes)]
    outputs = [run.communicate(timeout=timeout) for run in runs]
    return [(run.returncode, *output) for run, output in zip(runs, outputs, strict=True)]


def cache_files(env):
    return sorted(p for p in (os.path.join(r, f) for r, _, fs in os.walk(env["HF_HOME"])
                              for f in fs))


def assert_nothing_corrupt_in_cache(env):
    for path in cache_files(env):
        assert not path.endswith(".incomplete"), path
        name = os.path.basename(path)
        if "/blobs/" in path and len(name) == 64:  # LFS blobs are named by their sha256
            with open(path, "rb") as file:
                assert hashlib.sha256(file.read()).hexdigest() == name, path


def test_download_verify_generate_inspect(hub, env):
    done = gpt2port("download", REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert "reference: transformers GPT2LMHeadModel" in done.stdout
    assert "argmax agreement: 100% OK" in done.stdout and "PASSED" in done.stdout

    verified = gpt2port("verify", REPO, "--reference", "numpy", "--offline", env=env)
    assert verified.returncode == 0, verified.stderr
    assert "gpt2port.proof.reference (NumPy" in verified.stdout and "PASSED" in verified.stdout

    generated = gpt2port("generate", REPO, "The dog", "--max-new-tokens", "5", "--offline",
                         env=env)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("The dog") and len(generated.stdout) > len("The dog\n")

    inspected = gpt2port("inspect", REPO, "--offline", env=env)
    assert inspected.returncode == 0, inspected.stderr
    assert "h.0.attn.bias" in inspected.stdout and "(ignored buffer)" in inspected.stdout
    assert ("-> transformer_blocks.0.attention.query_projection.weight, "
            "transformer_blocks.0.attention.key_projection.weight") in inspected.stdout


def test_full_size_hub_layout_download(full_size_hub_folder, hub, env):
    hub.add_repo("test-org/gpt2-124m-shape", with_tokenizer(full_size_hub_folder))
    done = gpt2port("download", "test-org/gpt2-124m-shape", env=env)
    assert done.returncode == 0, done.stderr
    assert "model.safetensors" in done.stdout and "PASSED" in done.stdout


def test_sharded_and_pickle_repositories(hub, env, tmp_path):
    for layout in ("sharded", "pytorch_bin"):
        hub.add_repo(f"test-org/{layout}", write_layout(layout, tmp_path / layout))
        done = gpt2port("download", f"test-org/{layout}", "--reference", "numpy", env=env)
        assert done.returncode == 0, done.stderr
        assert "PASSED" in done.stdout


def test_cached_preset_loads_without_a_network_request(hub, env, tiny_repo):
    hub.add_repo(GPT2.repo_id, tiny_repo, commit=GPT2.revision)
    fill_cache = ("from huggingface_hub import hf_hub_download\n"
                  f"for name in ('config.json', 'model.safetensors'):\n"
                  f"    hf_hub_download({GPT2.repo_id!r}, name, revision={GPT2.revision!r})")
    subprocess.run([sys.executable, "-c", fill_cache], env=env, check=True)
    hub.requests.clear()
    load = "import gpt2port; gpt2port.load_pretrained('gpt2'); print('loaded')"
    loaded = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True,
                            text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr
    assert hub.requests == []


def test_preset_refuses_a_file_that_is_not_the_official_release(hub, env, tiny_repo):
    hub.add_repo(GPT2.repo_id, tiny_repo, commit=GPT2.revision)
    done = gpt2port("download", "gpt2", env=env)
    assert done.returncode == 15, done.stderr
    assert "the official release has 548105171" in done.stderr
    assert not [p for p in cache_files(env) if p.endswith("model.safetensors")]
    assert_nothing_corrupt_in_cache(env)


def test_corrupted_bytes_of_the_right_size(hub, env):
    hub.faults.corrupt = True
    done = gpt2port("download", REPO, env=env)
    assert done.returncode == 15, done.stderr
    assert "differs from the Hub's" in done.stderr and "--force" in done.stderr
    assert_nothing_corrupt_in_cache(env)

    again = gpt2port("download", REPO, "--force", env=env)
    assert again.returncode == 15  # still corrupt after the one fresh try
    hub.faults.corrupt = False
    fixed = gpt2port("download", REPO, "--force", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert_nothing_corrupt_in_cache(env)


def test_a_drop_mid_file_is_resumed(hub, env):
    hub.faults.drop_after, hub.faults.drops = 100_000, 1
    done = gpt2port("download", REPO, "--reference", "numpy", env=env)
    assert done.returncode == 0, done.stderr
    assert hub.faults.drops == 0
    assert_nothing_corrupt_in_cache(env)


def test_a_connection_that_keeps_dropping(hub, env):
    hub.faults.drop_after, hub.faults.drops = 100_000, 1000
    done = gpt2port("download", REPO, env=env)
    assert done.returncode == 14, done.stderr
    assert "connection failed" in done.stderr and "Traceback" not in done.stderr
    assert_nothing_corrupt_in_cache(env)


def test_a_server_too_slow_is_given_up_in_bounded_time(hub, env):
    hub.faults.delay = 3.0
    done = gpt2port("download", REPO, env={**env, "HF_HUB_DOWNLOAD_TIMEOUT": "1"})
    assert done.returncode == 14, done.stderr
    assert "did not answer in time" in done.stderr  # given up (gpt2port() bounds the wait)
    assert_nothing_corrupt_in_cache(env)


@pytest.mark.parametrize("args, code, message", [
    (["test-org/no-such-model"], 12, "repository not found, or private"),
    ([REPO, "--revision", "v9"], 12, "no such revision"),
])
def test_not_found(hub, env, args, code, message):
    done = gpt2port("download", *args, env=env)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "hint:" in done.stderr


def test_shard_missing_on_the_hub(hub, env, tmp_path):
    folder = write_layout("sharded", tmp_path / "sharded")
    shard = max(folder.glob("model-*.safetensors"))
    shard.unlink()
    hub.add_repo("test-org/sharded", folder)
    done = gpt2port("download", "test-org/sharded", env=env)
    assert done.returncode == 12, done.stderr
    assert f"shard {shard.name!r} named in model.safetensors.index.json is not on the Hub" in (
        done.stderr)


def test_gated_and_private_repositories(hub, env, tiny_repo):
    hub.add_repo("test-org/gated", tiny_repo, token="secret", gated=True)
    hub.add_repo("test-org/private", tiny_repo, token="secret")
    gated = gpt2port("download", "test-org/gated", env=env)
    assert gated.returncode == 13, gated.stderr
    assert "gated" in gated.stderr and "HF_TOKEN" in gated.stderr
    private = gpt2port("download", "test-org/private", env=env)
    assert private.returncode == 12 and "HF_TOKEN" in private.stderr
    allowed = gpt2port("download", "test-org/private", "--reference", "numpy",
                       env={**env, "HF_TOKEN": "secret"})
    assert allowed.returncode == 0, allowed.stderr


def test_offline(hub, env):
    not_cached = gpt2port("download", REPO, "--offline", env=env)
    assert not_cached.returncode == 11 and "not in the cache" in not_cached.stderr
    by_environment = gpt2port("verify", REPO, env={**env, "HF_HUB_OFFLINE": "1"})
    assert by_environment.returncode == 11, by_environment.stderr

    assert gpt2port("download", REPO, "--reference", "numpy", env=env).returncode == 0
    hub.requests.clear()
    cached = gpt2port("download", REPO, "--offline", "--reference", "numpy", env=env)
    assert cached.returncode == 0, cached.stderr
    assert hub.requests == []


def test_hub_unreachable(env):
    closed = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = gpt2port("download", REPO, env=closed)
    assert done.returncode == 14, done.stderr
    assert "connection failed" in done.stderr or "cannot be reached" in done.stderr


def test_disk_full(hub, env):
    done = gpt2port("download", REPO, env=env, limit_file_size=200_000)
    assert done.returncode == 16, done.stderr
    assert "no space left" in done.stderr
    assert_nothing_corrupt_in_cache(env)


def test_generate_refuses_a_tokenizer_bigger_than_the_vocabulary(hub, env, tmp_path):
    hub.add_repo("test-org/small-vocabulary", with_tokenizer(write_layout("hub", tmp_path / "s")))
    done = gpt2port("generate", "test-org/small-vocabulary", "The dog", env=env)
    assert done.returncode == 5, done.stderr
    assert "the tokenizer has 50257 tokens and the model 512 rows" in done.stderr


def test_help_shows_examples_and_exit_codes():
    done = subprocess.run([sys.executable, "-m", "gpt2port", "--help"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0
    assert "examples:" in done.stdout and "15 integrity" in done.stdout


def test_output_writes_a_native_checkpoint_that_loads_back(hub, env, tmp_path):
    done = gpt2port("download", REPO, "--reference", "numpy", "--output", str(tmp_path / "out"),
                    env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "merges.txt", "model.safetensors", "vocab.json"]
    again = gpt2port("generate", str(tmp_path / "out"), "The dog", "--max-new-tokens", "3",
                     env=env)
    assert again.returncode == 0, again.stderr


def incomplete_files(env):
    return [path for path in cache_files(env) if path.endswith(".incomplete")]


def test_a_killed_download_is_never_taken_for_complete_and_is_cleaned_up(hub, env):
    hub.faults.stall_after = 50_000
    run = subprocess.Popen([sys.executable, "-m", "gpt2port", "download", REPO], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not incomplete_files(env) and run.poll() is None:
        time.sleep(0.05)
    run.kill()  # SIGKILL: no cleanup code of ours or huggingface_hub's runs
    run.wait()
    stale = incomplete_files(env)
    assert stale, "the stalled download should have left its partial file"
    hub.faults.stall_after = None
    offline = gpt2port("download", REPO, "--offline", env=env)
    assert offline.returncode == 11, offline.stderr  # the partial file is not a cached model
    done = gpt2port("download", REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert not incomplete_files(env)  # the stale partial file was removed
    assert_nothing_corrupt_in_cache(env)


def test_three_processes_downloading_at_once_all_succeed_with_one_copy(hub, env):
    hub.faults.delay = 1.0  # both are in flight at the same time
    for code, out, err in gpt2port_at_once("download", REPO, env=env, processes=3):
        assert code == 0, err
        assert "PASSED" in out
    blobs = [path for path in cache_files(env) if "/blobs/" in path]
    snapshot = [path for path in cache_files(env) if "/snapshots/" in path]
    assert len(blobs) == len(snapshot)  # one blob per file: nothing stored twice
    assert_nothing_corrupt_in_cache(env)


@pytest.fixture(scope="module")
def books_repo(tmp_path_factory):
    """A repo like rasbt/gpt2-from-scratch-pytorch: the book's GPTModel state dicts under their
    own names (``.pth`` and ``.safetensors``), no config.json. Width 768, so the shapes give the
    config; one block and a small vocabulary keep it small."""
    book = the_book()
    torch.manual_seed(0)
    model = book.GPTModel({"vocab_size": 512, "context_length": 64, "emb_dim": 768,
                           "n_heads": 12, "n_layers": 1, "drop_rate": 0.0,
                           "qkv_bias": True}).eval()
    folder = tmp_path_factory.mktemp("books-repo")
    torch.save(model.state_dict(), folder / "gpt2-small-124M.pth")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              folder / "gpt2-small-124M.safetensors")
    (folder / "README.md").write_text("the book's weights\n")
    with torch.no_grad():
        expected = model(torch.tensor([[1, 2, 3, 4]]))[0].numpy()
    return folder, expected


def test_a_named_weights_file_of_a_hub_repo_loads(hub, env, books_repo, tmp_path):
    folder, expected = books_repo
    hub.add_repo("rasbt-like/gpt2-from-scratch", folder)
    refused = gpt2port("download", "rasbt-like/gpt2-from-scratch", env=env)
    assert refused.returncode == 12, refused.stderr
    assert "gpt2-small-124M.pth" in refused.stderr and "--file" in refused.stderr
    missing = gpt2port("download", "rasbt-like/gpt2-from-scratch", "--file", "nope.pth", env=env)
    assert missing.returncode == 12 and "'nope.pth'" in missing.stderr
    assert "gpt2-small-124M.safetensors" in missing.stderr

    done = gpt2port("download", "rasbt-like/gpt2-from-scratch", "--file", "gpt2-small-124M.pth",
                    "--reference", "numpy", env=env)
    assert done.returncode == 0, done.stderr
    assert "PASSED" in done.stdout
    script = ("import sys, numpy, torch\n"
              "from gpt2port import load_pretrained\n"
              "model = load_pretrained('rasbt-like/gpt2-from-scratch', "
              "filename='gpt2-small-124M.safetensors')\n"
              "with torch.no_grad():\n"
              "    numpy.save(sys.argv[1], model(torch.tensor([[1, 2, 3, 4]]))[0].numpy())\n")
    loaded = subprocess.run([sys.executable, "-c", script, str(tmp_path / "logits.npy")],
                            env=env, capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr
    assert np.abs(np.load(tmp_path / "logits.npy") - expected).max() < 1e-5
    converted = gpt2port("convert", "rasbt-like/gpt2-from-scratch", str(tmp_path / "hf"),
                         "--file", "gpt2-small-124M.pth", "--to", "hf", env=env)
    assert converted.returncode == 0, converted.stderr
    local = gpt2port("verify", str(tmp_path / "hf"), "--file", "x.pth", env=env)
    assert local.returncode == 3 and "local path" in local.stderr


def test_compare_resolves_a_file_of_a_repo_as_load_pretrained_does(hub, env, books_repo,
                                                                    tmp_path):
    folder, _ = books_repo
    hub.add_repo("rasbt-like/gpt2-from-scratch", folder)
    found = gpt2port("compare", "rasbt-like/gpt2-from-scratch", "rasbt-like/gpt2-from-scratch",
                     "--file", "gpt2-small-124M.pth",
                     "--other-file", "gpt2-small-124M.safetensors", "--json", env=env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["verdict"] == "identical"
    pinned = gpt2port("compare", REPO, REPO, "--revision", "main", "--other-revision", "nope",
                      env=env)
    assert pinned.returncode == 12 and "nope" in pinned.stderr, pinned.stderr
