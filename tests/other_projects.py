"""Test-side writers and readers of nanoGPT's and llm.c's files, from their documented layouts.

Neither project is packaged, so their files are made here from a transformers ``GPT2LMHeadModel``
(the reference) exactly as nanoGPT's ``train.py`` and llm.c's ``write_model`` lay them out, and
llm.c's files are read back with NumPy, sharing no code with gpt2port.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2LMHeadModel

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def nanogpt_state(reference: GPT2LMHeadModel, *, bias: bool = True) -> dict[str, torch.Tensor]:
    """nanoGPT's ``GPT.state_dict()`` for the reference's weights: ``transformer.`` names,
    ``nn.Linear`` [out, in], ``lm_head.weight`` sharing ``wte``; no biases with ``bias=False``."""
    state = {}
    for name, tensor in reference.transformer.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if not bias and name.endswith(".bias"):
            continue
        state[f"transformer.{name}"] = tensor.t().contiguous() if name.endswith(CONV1D) else (
            tensor.clone())
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def model_args(reference: GPT2LMHeadModel, *, bias: bool = True, dropout: float = 0.0) -> dict:
    config = reference.config
    return {"n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
            "block_size": config.n_positions, "bias": bias, "vocab_size": config.vocab_size,
            "dropout": dropout}


def write_nanogpt_checkpoint(reference: GPT2LMHeadModel, folder: Path, *, bias: bool = True,
                             compiled: bool = False) -> Path:
    """``folder/ckpt.pt`` as nanoGPT's train.py saves it (optimizer state and run config too)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = nanogpt_state(reference, bias=bias)
    if compiled:
        state = {f"_orig_mod.{name}": tensor for name, tensor in state.items()}
    optimizer = {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 6e-4, "params": [0]}]}
    checkpoint = {"model": state, "optimizer": optimizer,
                  "model_args": model_args(reference, bias=bias), "iter_num": 5000,
                  "best_val_loss": torch.tensor(2.85),
                  "config": {"dataset": "openwebtext", "batch_size": 12, "compile": compiled}}
    torch.save(checkpoint, folder / "ckpt.pt")
    return folder / "ckpt.pt"


LLMC_ORDER = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
              "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
              "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")


def write_llmc_model(reference: GPT2LMHeadModel, path: Path, *, padded_vocab_size: int,
                     bf16: bool = False) -> Path:
    """llm.c's model file: 256 int32 of header, then the tensors in ``write_model``'s order."""
    config, state = reference.config, reference.transformer.state_dict()
    header = np.zeros(256, dtype="<i4")
    header[:8] = (20240326, 5 if bf16 else 3, config.n_positions, config.vocab_size,
                  config.n_layer, config.n_head, config.n_embd, padded_vocab_size)
    wte = torch.zeros(padded_vocab_size, config.n_embd)
    wte[:config.vocab_size] = state["wte.weight"]
    tensors = [wte, state["wpe.weight"]]
    for kind in LLMC_ORDER:
        layers = [state[f"h.{i}.{kind}"] for i in range(config.n_layer)]
        tensors.append(torch.stack([t.t() if kind in CONV1D else t for t in layers]))
    tensors += [state["ln_f.weight"], state["ln_f.bias"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.write(header.tobytes())
        for tensor in tensors:
            tensor = tensor.contiguous().to(torch.bfloat16 if bf16 else torch.float32)
            file.write(tensor.view(torch.int16 if bf16 else torch.int32).numpy().tobytes())
    return path


def read_llmc_model(path: Path) -> tuple[list[int], np.ndarray]:
    """The header's first 8 ints and every value after it, as float32."""
    data = Path(path).read_bytes()
    header = list(struct.unpack("<8i", data[:32]))
    raw = np.frombuffer(data, dtype="<u2" if header[1] == 5 else "<f4", offset=1024)
    values = (raw.astype(np.uint32) << 16).view(np.float32) if header[1] == 5 else raw
    return header, values


def read_llmc_tokenizer(path: Path) -> tuple[list[int], list[bytes]]:
    """``gpt2_tokenizer.bin``: the header's first 4 ints and each token's bytes."""
    data = Path(path).read_bytes()
    header = list(struct.unpack("<4i", data[:16]))
    tokens, offset = [], 1024
    for _ in range(header[2]):
        length = data[offset]
        tokens.append(data[offset + 1:offset + 1 + length])
        offset += 1 + length
    assert offset == len(data)
    return header, tokens


def the_book():
    """The book's own ``ch04`` module (``llms_from_scratch``), or a skip of the one test that
    needs it, saying how to install it: never a skip of the whole module."""
    import pytest

    return pytest.importorskip("llms_from_scratch.ch04", reason="pip install --no-deps "
                               "llms-from-scratch (the book's code; the quickstart and .ci/run "
                               "install it)")
