"""Conversions, verification and loading hold about one tensor of the source at a time.

What is measured is the source file's pages mapped into this process (``Rss`` of its mappings
in ``/proc/self/smaps``), sampled as each tensor is made: a count of pages, not a time, so it
does not depend on the machine's speed or load.
"""

import sys
import warnings
from pathlib import Path

import pytest
import torch
from checkpoints import write_layout

from gpt2port import load_pretrained
from gpt2port.conversion import convert
from gpt2port.formats import BY_NAME, FORMATS
from gpt2port.formats import stream as stream_module
from gpt2port.io.arrays import Arrays
from gpt2port.proof.reference import reference_logits

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/smaps, which only Linux has")

# 8 layers of width 256 and a 4096-row vocabulary: 27 MB of weights, the largest tensor 4 MB
SHAPE = {"n_embd": 256, "n_layer": 8, "n_head": 4, "n_positions": 256, "vocab_size": 4096}
LARGEST = 4096 * 256 * 4
SLACK = 64 * 4096  # pages shared with a neighbouring tensor, at each end


def resident(path: Path) -> int:
    """Bytes of ``path``'s pages mapped into this process now."""
    target, total, inside = str(Path(path).resolve()), 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                inside = fields[-1] == target
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = write_layout("hub", tmp_path_factory.mktemp("streaming") / "hub", **SHAPE)
    return folder


def sampled(monkeypatch, cls, path: Path) -> list[int]:
    """The source's resident bytes each time ``cls`` makes a tensor, sampled right after."""
    samples, make = [], cls.__getitem__

    def sampling(self, name):
        made = make(self, name)
        samples.append(resident(path))
        return made

    monkeypatch.setattr(cls, "__getitem__", sampling)
    return samples


@pytest.mark.parametrize("target", [each.name for each in FORMATS])
def test_a_conversion_holds_about_one_source_tensor_at_a_time(source, tmp_path, monkeypatch,
                                                              target):
    weights = source / "model.safetensors"
    samples = sampled(monkeypatch, stream_module.TensorStream, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(source, tmp_path / "out", to=target)
    total = weights.stat().st_size
    assert len(samples) >= 8 * 4  # the tensors were made one at a time
    assert max(samples) <= 2 * LARGEST + SLACK < total / 3, (max(samples), total)
    assert resident(weights) <= SLACK  # nothing of the source held once written


@pytest.mark.parametrize("target", list(BY_NAME))
def test_the_numpy_reference_reads_a_tensor_at_a_time(source, tmp_path, monkeypatch, target):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = convert(source, tmp_path / "out", to=target)
    weights = next(path for path in sorted(Path(exported).rglob("*"))
                   if path.is_file() and path.stat().st_size > LARGEST)
    samples = sampled(monkeypatch, Arrays, weights)
    logits = reference_logits(exported, [1, 2, 3], source_format=BY_NAME[target])
    assert logits.shape == (3, 4096)
    assert samples and max(samples) <= LARGEST + SLACK < weights.stat().st_size / 3, (
        max(samples), weights.stat().st_size)


def test_loading_in_half_precision_keeps_none_of_the_source(source):
    weights = source / "model.safetensors"
    model = load_pretrained(source, dtype="bf16")
    assert model.token_embedding_table.weight.dtype == torch.bfloat16
    assert resident(weights) <= SLACK
