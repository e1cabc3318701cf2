"""transformers' TensorFlow and Flax weights (issue 30, item 2): ``tf_model.h5`` and
``flax_model.msgpack`` folders load, verify and convert with the PyTorch model's logits; a Hub
repo holding only them downloads them. The files are written to the layouts transformers 4.x's
TF and Flax classes save (``framework_files``), every tensor random."""

import os
import subprocess
import sys

import pytest
import torch
import transformers
from checkpoints import TINY
from framework_files import write_flax_msgpack, write_keras_h5
from stand_in_hub import StandInHub

from gpt2port import CheckpointError, convert, inspect, load_pretrained, verify

IDS = torch.tensor([[5, 77, 300, 12, 499, 1, 256, 31, 8, 100]])


def random_model(kind="GPT2LMHeadModel", **config):
    torch.manual_seed(0)
    model = getattr(transformers, kind)(transformers.GPT2Config(**{**TINY, **config})).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


CASES = {
    "keras_lm": (lambda: random_model(), write_keras_h5),
    "keras_classifier": (lambda: random_model("GPT2ForSequenceClassification", num_labels=3,
                                              pad_token_id=0), write_keras_h5),
    "flax_lm": (lambda: random_model(), write_flax_msgpack),
    "flax_untied_head": (lambda: random_model(tie_word_embeddings=False), write_flax_msgpack),
    "flax_bf16": (lambda: random_model(),
                  lambda model, folder: write_flax_msgpack(model, folder, "bfloat16")),
}


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module", params=CASES)
def written(request, tmp_path_factory):
    make, write = CASES[request.param]
    model = make()
    folder = write(model, tmp_path_factory.mktemp("frameworks") / request.param)
    if request.param == "flax_bf16":  # what the file holds: the weights rounded to bf16
        model = model.to(torch.bfloat16).float()
    return folder, model


def test_tf_and_flax_weights_load_with_the_pytorch_model_s_logits(written):
    folder, model = written
    ours = load_pretrained(folder, dtype="float32")
    with torch.no_grad():
        found = ours(IDS)
    expected = logits(model)
    if ours.config["task"] == "text_classification":
        found = found[:, -1]
    assert found.shape == expected.shape
    assert torch.allclose(found, expected, atol=1e-4, rtol=0), (found - expected).abs().max()


def test_tf_and_flax_weights_verify_against_their_own_files(written):
    folder, _ = written
    result = verify(folder)  # transformers 5 reads neither: the NumPy reference, by h5py/msgpack
    assert result.passed, result.report()
    assert "NumPy" in result.reference


def test_tf_and_flax_weights_convert_to_pytorch(written, tmp_path):
    folder, model = written
    convert(folder, tmp_path / "hf", to="hf", dtype="f32")
    again = type(model).from_pretrained(tmp_path / "hf").eval()
    assert torch.allclose(logits(again), logits(model), atol=1e-4, rtol=0)
    assert "tf_model.h5" in inspect(folder) or "flax_model.msgpack" in inspect(folder)


def test_pytorch_weights_are_preferred_beside_tf_ones(tmp_path):
    model = random_model()
    write_keras_h5(random_model(n_layer=1), tmp_path)  # another model in the TF file
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        found = load_pretrained(tmp_path)(IDS)
    assert torch.allclose(found, logits(model), atol=1e-5, rtol=0)


def test_a_damaged_flax_file_is_our_error(tmp_path):
    folder = write_flax_msgpack(random_model(), tmp_path / "flax")
    data = (folder / "flax_model.msgpack").read_bytes()
    (folder / "flax_model.msgpack").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="not a Flax msgpack file"):
        load_pretrained(folder)


def test_a_hub_repo_with_only_tf_weights_downloads_and_verifies(tmp_path):
    folder = write_keras_h5(random_model(), tmp_path / "repo")
    with StandInHub() as hub:
        hub.add_repo("test-org/tf-only", folder)
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        run = subprocess.run([sys.executable, "-m", "gpt2port", "download", "test-org/tf-only"],
                             env=env, text=True, capture_output=True, check=False, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "tf_model.h5" in run.stdout and "PASSED" in run.stdout
