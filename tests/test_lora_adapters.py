"""PEFT LoRA adapters (issue 30, item 1), written by peft itself on bases saved by transformers:
they load as the base with the adapter merged, with the logits of peft's own forward, through
every command; what is not plain LoRA is refused by name."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import transformers
from lora_files import CASES, IDS, scores, the_peft, write_adapter, write_base
from stand_in_hub import StandInHub

from gpt2port import CheckpointError, ConfigError, convert, inspect, load_pretrained, verify
from gpt2port.errors import MappingError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_base(tmp_path_factory.mktemp("lora") / "base")


@pytest.fixture(scope="module", params=CASES)
def adapter(request, base, tmp_path_factory):
    kind, options, lora = CASES[request.param]
    folder = tmp_path_factory.mktemp("lora") / request.param
    return folder, write_adapter(base, folder, kind, options, lora), kind


def last_if_classifier(found, kind):
    return found[:, -1] if kind == "GPT2ForSequenceClassification" else found


def test_an_adapter_loads_merged_with_peft_s_own_logits(adapter):
    folder, expected, kind = adapter
    model = load_pretrained(folder)
    with torch.no_grad():
        found = last_if_classifier(model(IDS), kind)
    assert found.shape == expected.shape
    assert torch.allclose(found, expected, atol=1e-4, rtol=0), (found - expected).abs().max()


@pytest.mark.parametrize("reference", ["transformers", "numpy"])
def test_verify_checks_an_adapter_against_peft_and_numpy(adapter, reference):
    folder, _, _ = adapter
    result = verify(folder, reference=reference)
    assert result.passed, result.report()
    assert ("peft's LoRA forward" if reference == "transformers"
            else "lora_reference") in result.reference


def test_a_merged_conversion_says_so_and_transformers_reads_it(adapter, tmp_path):
    folder, expected, kind = adapter
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        convert(folder, tmp_path / "merged", to="hf")
    assert any("merged onto its base" in str(each.message) for each in said)
    merged = getattr(transformers, kind).from_pretrained(tmp_path / "merged").eval()
    found = scores(merged, IDS)
    assert torch.allclose(found, expected, atol=1e-4, rtol=0), (found - expected).abs().max()


def test_inspect_lists_what_the_adapter_changes(adapter):
    folder, _, _ = adapter
    shown = inspect(folder)
    assert "LoRA adapter" in shown and "rank" in shown and "scale" in shown
    assert "h.0.attn" in shown or "h.0.mlp" in shown


def test_a_base_trained_elsewhere_is_named_with_base(base, tmp_path):
    kind, options, lora = CASES["classifier_rslora"]
    expected = write_adapter(base, tmp_path / "adapter", kind, options, lora, names_base=False)
    with pytest.raises(CheckpointError, match="names no base") as refused:
        load_pretrained(tmp_path / "adapter")
    assert "--base" in refused.value.hint
    model = load_pretrained(tmp_path / "adapter", base=base)
    with torch.no_grad():
        assert torch.allclose(model(IDS)[:, -1], expected, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="for a LoRA adapter"):
        load_pretrained(base, base=base)


def test_a_base_that_cannot_be_found_is_named(adapter, tmp_path):
    folder, _, _ = adapter
    with pytest.raises(CheckpointError, match="its base .*nowhere.* cannot be loaded") as refused:
        load_pretrained(folder, base=tmp_path / "nowhere")
    assert "--base" in refused.value.hint


def test_a_base_of_other_shapes_lists_every_problem(tmp_path, base):
    kind, options, lora = CASES["lm_head_on_tied"]
    write_adapter(base, tmp_path / "adapter", kind, options, lora)
    wider = write_base(tmp_path / "wider", n_embd=32, n_head=4)
    with pytest.raises(MappingError) as refused:
        load_pretrained(tmp_path / "adapter", base=wider)
    # every LoRA module of both layers (and the tied head it saved) is listed
    assert len(refused.value.problems) >= 9, refused.value.problems


@pytest.mark.parametrize(("change", "said"), [
    ({"lora_alpha": "16"}, "lora_alpha '16' is not a number"),
    ({"alpha_pattern": {"(": 2}}, "alpha_pattern's '\\(' is not a pattern"),
    ({"alpha_pattern": [1]}, "alpha_pattern is not a map"),
    ({"base_model_name_or_path": [1]}, "base_model_name_or_path is not a name"),
    ({"task_type": ["SEQ_CLS"]}, "not a head GPT-2 has"),
    ({"peft_type": "LOHA"}, "a LOHA adapter"),
])
def test_settings_of_the_wrong_kind_are_our_error(adapter, tmp_path, change, said):
    folder, _, _ = adapter
    copied = tmp_path / "adapter"
    shutil.copytree(folder, copied)
    settings = json.loads((copied / "adapter_config.json").read_text())
    (copied / "adapter_config.json").write_text(json.dumps({**settings, **change}))
    with pytest.raises(ConfigError, match=said):
        load_pretrained(copied)


def test_other_adapter_kinds_are_refused_by_name(base, tmp_path):
    model = transformers.GPT2LMHeadModel.from_pretrained(base)
    peft = the_peft()
    peft.get_peft_model(model, peft.IA3Config(target_modules=["c_attn"], feedforward_modules=[],
                                              task_type="CAUSAL_LM")).save_pretrained(
        tmp_path / "ia3")
    with pytest.raises(ConfigError, match="a IA3 adapter: gpt2port merges LoRA adapters only"):
        load_pretrained(tmp_path / "ia3")
    kind, options, lora = CASES["lm_head_on_tied"]
    write_adapter(base, tmp_path / "dora", kind, options, {**lora, "use_dora": True})
    with pytest.raises(ConfigError, match="DoRA"):
        load_pretrained(tmp_path / "dora")


def test_the_cli_verifies_an_adapter_from_a_hub_repo(base, tmp_path):
    """An adapter repo naming its base repo, both on the stand-in Hub: ``verify`` fetches
    both; a base that is not there is an error naming it, exit code and hint."""
    kind, options, lora = CASES["classifier_rslora"]
    folder = tmp_path / "adapter"
    write_adapter(base, folder, kind, options, lora)
    settings = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(
        {**settings, "base_model_name_or_path": "test-org/tiny-base"}))
    with StandInHub() as hub:
        hub.add_repo("test-org/tiny-base", base)
        hub.add_repo("test-org/tiny-adapter", folder)
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        run = subprocess.run([sys.executable, "-m", "gpt2port", "verify", "test-org/tiny-adapter",
                              "--reference", "numpy"], env=env, text=True, capture_output=True,
                             check=False, timeout=300)
        assert run.returncode == 0, run.stderr
        assert "PASSED" in run.stdout
        missing = subprocess.run([sys.executable, "-m", "gpt2port", "inspect",
                                  "test-org/tiny-adapter", "--base", "test-org/not-there"],
                                 env=env, text=True, capture_output=True, check=False,
                                 timeout=300)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "not-there" in missing.stderr and "hint: name the base with --base" in missing.stderr
