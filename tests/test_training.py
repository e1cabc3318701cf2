"""gpt2port trains like the reference: from the same weights and batch, the loss and every
parameter's gradient equal transformers' (fp32, dropout off)."""

import pytest
import torch
import torch.nn.functional as F
from checkpoints import load_reference, write_layout

from gpt2port import load_pretrained
from gpt2port.formats.huggingface import TABLE
from gpt2port.formats.stream import TensorStream

RELATIVE_TOLERANCE = 1e-5


@pytest.mark.parametrize("layout", ["hub", "untied_head"])
def test_loss_and_every_gradient_equal_transformers(layout, tmp_path):
    folder = write_layout(layout, tmp_path / layout, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0)
    reference, ours = load_reference(folder).train(), load_pretrained(folder).train()
    ours.requires_grad_(True)
    batch = torch.randint(0, 512, (4, 33), generator=torch.Generator().manual_seed(7))
    theirs = reference(batch, labels=batch).loss  # transformers shifts the labels itself
    theirs.backward()
    logits = ours(batch)[:, :-1]  # each position predicts the next token
    loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    assert abs(loss.item() - theirs.item()) <= RELATIVE_TOLERANCE * abs(theirs.item())

    gradients = {name: parameter.grad for name, parameter in ours.named_parameters()}
    if ours.config["tie_output_head"]:
        gradients.pop("output_head.weight", None)  # one tensor: its gradient is the table's
    ours_as_theirs = dict(TensorStream(TABLE, gradients, ours.config))
    expected = {name.removeprefix("transformer."): parameter.grad
                for name, parameter in reference.named_parameters()}
    assert ours_as_theirs.keys() == expected.keys()
    for name, gradient in expected.items():
        difference = (ours_as_theirs[name] - gradient).abs().max() / gradient.abs().max()
        assert difference <= RELATIVE_TOLERANCE, (name, float(difference))
