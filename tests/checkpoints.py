"""Test-side writers of GPT-2 checkpoints in every layout found in the wild.

The weights come from transformers' ``GPT2LMHeadModel`` (the reference), and are written by
transformers' own ``save_pretrained`` wherever it produces the layout; only the Hub's exact layout
(no prefix, causal-mask buffers, no lm_head) and the pickle layout are assembled here by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

TINY = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64, "vocab_size": 512,
        "bos_token_id": 511, "eos_token_id": 511, "initializer_range": 0.2}
# GPT-2's own tokenizer files, shipped in the package (OpenAI's, MIT)
GPT2_FILES = Path(__file__).resolve().parents[1] / "gpt2port" / "data"
GPT2_VOCAB = json.loads((GPT2_FILES / "vocab.json").read_text(encoding="utf-8"))
GPT2_MERGES = (GPT2_FILES / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
LAYOUTS = ("hub", "prefixed", "explicit_tied_head", "untied_head", "fp16", "bf16", "sharded",
           "pytorch_bin")


def reference_model(seed: int = 0, **config) -> GPT2LMHeadModel:
    """A randomly initialised GPT2LMHeadModel in eval mode."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**{**TINY, **config})).eval()


def load_reference(folder: Path) -> GPT2LMHeadModel:
    """transformers' own reading of a checkpoint folder, in fp32."""
    return GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()


def hub_state_dict(model: GPT2LMHeadModel) -> dict[str, torch.Tensor]:
    """The tensors of openai-community/gpt2's model.safetensors: no prefix, masks, no lm_head."""
    state = {}
    context = model.config.n_positions
    mask = torch.tril(torch.ones(context, context)).view(1, 1, context, context)
    for name, tensor in model.transformer.state_dict().items():
        state[name] = tensor.contiguous()
    for index in range(model.config.n_layer):
        state[f"h.{index}.attn.bias"] = mask.clone()
    return state


def write_hub_layout(model: GPT2LMHeadModel, folder: Path, *, tokenizer: bool = True) -> Path:
    """A folder like the Hub's snapshot of openai-community/gpt2 (weights, config and, where
    ``tokenizer``, GPT-2's tokenizer cut to the model's vocabulary)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    save_file(hub_state_dict(model), folder / "model.safetensors", metadata={"format": "pt"})
    if tokenizer and 257 <= model.config.vocab_size <= len(GPT2_VOCAB):
        write_gpt2_tokenizer(folder, model.config.vocab_size)
    return folder


def write_gpt2_tokenizer(folder: Path, size: int) -> None:
    """GPT-2's own vocab.json + merges.txt cut to ``size`` tokens: its 256 bytes, its first
    ``size - 257`` merges (each builds on earlier tokens only) and <|endoftext|> last, as
    transformers' GPT2Tokenizer reads them."""
    merges = GPT2_MERGES[:size - 257]
    vocab = {token: i for token, i in GPT2_VOCAB.items() if i < size - 1}
    vocab["<|endoftext|>"] = size - 1
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                       encoding="utf-8")


def write_layout(layout: str, folder: Path, seed: int = 0, **config) -> Path:
    """Write a checkpoint of a random reference model in ``layout`` into ``folder``."""
    untied = layout == "untied_head"
    model = reference_model(seed, tie_word_embeddings=not untied, **config)
    if layout == "hub":
        write_hub_layout(model, folder)
    elif layout in ("prefixed", "untied_head"):
        model.save_pretrained(folder)
    elif layout in ("fp16", "bf16"):
        model.to(torch.float16 if layout == "fp16" else torch.bfloat16).save_pretrained(folder)
    elif layout == "sharded":
        model.save_pretrained(folder, max_shard_size="100KB")
    elif layout in ("explicit_tied_head", "pytorch_bin"):
        folder.mkdir(parents=True, exist_ok=True)
        model.config.to_json_file(folder / "config.json")
        state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        state["lm_head.weight"] = state["transformer.wte.weight"].clone()
        for index in range(model.config.n_layer):
            state[f"transformer.h.{index}.attn.masked_bias"] = torch.tensor(-1e4)
        if layout == "pytorch_bin":
            torch.save(state, folder / "pytorch_model.bin")
        else:
            save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        raise ValueError(layout)
    return folder


def edit_config(folder: Path, **changes) -> None:
    """Change keys of a folder's config.json in place."""
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
