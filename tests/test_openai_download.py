"""``gpt2port download --source openai`` against a stand-in for OpenAI's storage."""

import os
import shutil

import pytest
from checkpoints import reference_model, write_hub_layout
from stand_in_storage import StandInStorage
from test_download import gpt2port, gpt2port_at_once

from gpt2port.conversion import convert
from gpt2port.formats.openai import RELEASE_FILES
from gpt2port.text.tokenizer import BUNDLED

DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A release folder as OpenAI serves it, of a small random model with GPT-2's vocabulary."""
    root = tmp_path_factory.mktemp("release")
    hub = write_hub_layout(reference_model(vocab_size=50257, eos_token_id=50256,
                                           bos_token_id=50256), root / "hub")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(BUNDLED / name, hub / name)
    return convert(hub, root / "openai", to="openai")


@pytest.fixture
def storage(release):
    with StandInStorage({"355M": release, "124M": release}) as storage:
        yield storage


@pytest.fixture
def env(storage, tmp_path):
    return {**os.environ, "GPT2PORT_OPENAI_ENDPOINT": storage.endpoint,
            "GPT2PORT_DOWNLOAD_TIMEOUT": "5", "GPT2PORT_CACHE": str(tmp_path / "cache")}


def test_download_checks_and_verifies(storage, env, tmp_path, release):
    done = gpt2port("download", "gpt2-medium", "--source", "openai", env=env)
    assert done.returncode == 0, done.stderr
    assert "PASSED" in done.stdout
    folder = tmp_path / "cache" / "openai" / "355M"
    files = sorted(p.name for p in folder.iterdir() if p.name != ".lock")
    assert files == sorted(RELEASE_FILES)
    for name in RELEASE_FILES:
        assert (folder / name).read_bytes() == (release / name).read_bytes()
    again = gpt2port("download", "355M", "--source", "openai", "--offline", env=env)
    assert again.returncode == 0, again.stderr
    assert len(storage.requests) == len(RELEASE_FILES)  # the second run asked for nothing


def test_a_drop_mid_file_is_resumed_by_the_next_run(storage, env, tmp_path):
    storage.faults.drop_after, storage.faults.drops = 5000, 1
    first = gpt2port("download", "355M", "--source", "openai", env=env)
    assert first.returncode == 14, first.stderr
    assert "run the same command again" in first.stderr
    folder = tmp_path / "cache" / "openai" / "355M"
    assert not (folder / DATA).exists()  # nothing under the final name
    partial = folder / f"{DATA}.partial"
    assert partial.stat().st_size == 5000
    second = gpt2port("download", "355M", "--source", "openai", env=env)
    assert second.returncode == 0, second.stderr
    assert (f"/gpt-2/models/355M/{DATA}", "bytes=5000-") in storage.requests
    assert not partial.exists()


def test_the_124m_release_is_checked_against_the_known_answer(env):
    """Random weights served as 124M cannot give the real model's greedy tokens."""
    done = gpt2port("download", "124M", "--source", "openai", env=env)
    assert done.returncode == 6, done.stdout + done.stderr
    assert "known greedy answer (20 tokens): NOT OK" in done.stdout


def test_two_processes_downloading_at_once_both_succeed(storage, env, tmp_path, release):
    storage.faults.delay = 0.5  # so that the two overlap
    for code, out, err in gpt2port_at_once("download", "355M", "--source", "openai", env=env):
        assert code == 0, err
        assert "PASSED" in out
    folder = tmp_path / "cache" / "openai" / "355M"
    assert sorted(p.name for p in folder.iterdir() if p.name != ".lock") == sorted(RELEASE_FILES)
    assert (folder / DATA).read_bytes() == (release / DATA).read_bytes()
    assert sum(path.endswith(DATA) for path, _ in storage.requests) == 1  # fetched once


@pytest.mark.parametrize(("args", "code", "message"), [
    (("7B",), 3, "no OpenAI release named '7B'"),
    (("774M",), 12, "774M/checkpoint: not found"),
    (("355M", "--offline"), 11, "release is not downloaded"),
])
def test_failures_end_in_our_errors(env, args, code, message):
    done = gpt2port("download", *args, "--source", "openai", env=env)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_corrupted_download_fails_its_checksum(storage, env, tmp_path, release):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(release, corrupt)
    raw = bytearray((corrupt / DATA).read_bytes())
    raw[100] ^= 0x40
    (corrupt / DATA).write_bytes(bytes(raw))
    storage.releases["355M"] = corrupt
    done = gpt2port("download", "355M", "--source", "openai", env=env)
    assert done.returncode == 4, done.stderr
    assert "fails its checksum" in done.stderr and "--force" in done.stderr
