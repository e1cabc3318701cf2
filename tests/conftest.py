import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow, a test reference, is chatty

import pytest
import torch
from checkpoints import reference_model, write_hub_layout
from transformers import GPT2Config, GPT2LMHeadModel


@pytest.fixture(scope="session")
def full_size_hub_folder(tmp_path_factory):
    """A 124M-shape checkpoint in the exact layout of openai-community/gpt2 (random weights)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    return write_hub_layout(model, tmp_path_factory.mktemp("gpt2-124m"))


@pytest.fixture
def tiny_hub_folder(tmp_path):
    return write_hub_layout(reference_model(), tmp_path / "tiny")
