"""Test-side PEFT LoRA adapters, written by peft itself on bases saved by transformers, every
trained tensor random (peft starts B at zero)."""

import json
import warnings

import torch
import transformers
from checkpoints import TINY


def the_peft():
    """peft, or a skip of the one test that needs it, saying how to install it."""
    import pytest

    return pytest.importorskip("peft", reason="peft writes the adapters: pip install peft "
                               "(the test extra installs it)")


IDS = torch.randint(0, 512, (1, 14), generator=torch.Generator().manual_seed(5))
# transformers' class the adapter is trained on, its options, and peft's LoraConfig
CASES = {
    "lm_head_on_tied": ("GPT2LMHeadModel", {}, {
        "r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj", "c_fc", "lm_head"],
        "task_type": "CAUSAL_LM"}),
    "classifier_rslora": ("GPT2ForSequenceClassification", {"num_labels": 3}, {
        "r": 4, "lora_alpha": 16, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True,
        "use_rslora": True, "task_type": "SEQ_CLS", "bias": "all"}),
    "embedding_alpha_pattern": ("GPT2LMHeadModel", {}, {
        "r": 2, "lora_alpha": 4, "target_modules": ["wte", "c_proj", "c_attn"],
        "alpha_pattern": {"h.1.attn.c_proj": 32}}),
    "token_classifier_lora_bias": ("GPT2ForTokenClassification", {"num_labels": 5}, {
        "r": 3, "lora_alpha": 6, "target_modules": ["c_attn", "c_proj"], "lora_bias": True,
        "task_type": "TOKEN_CLS"}),
    "question_answering_lora_only": ("GPT2ForQuestionAnswering", {}, {
        "r": 3, "lora_alpha": 6, "target_modules": ["c_fc"], "task_type": "QUESTION_ANS",
        "bias": "lora_only"}),
}


def scores(model, ids):
    with torch.no_grad():
        found = model(ids)
    if hasattr(found, "start_logits"):
        return torch.stack([found.start_logits, found.end_logits], dim=-1)
    return found.logits


def write_base(folder, seed=0, **config):
    """A GPT2LMHeadModel, every tensor random (norms included), saved by save_pretrained."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**TINY, **config})).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(folder)
    return folder


def write_adapter(base, folder, kind, options, lora, *, names_base=True):
    """peft's adapter on ``base`` loaded in transformers' ``kind``, every trained tensor random
    (peft starts B at zero), saved by peft; returns peft's scores on IDS."""
    peft = the_peft()

    model = getattr(transformers, kind).from_pretrained(base, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes on fan_in_fan_out and tied layers
        tuned = peft.get_peft_model(model, peft.LoraConfig(**lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in tuned.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    tuned.save_pretrained(folder)
    settings = json.loads((folder / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = str(base) if names_base else None
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return scores(tuned.eval(), IDS)
