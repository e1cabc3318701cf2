"""transformers' other GPT-2 heads (issue 29, item 2): token classification (a label per
position, with a bias), question answering (start and end scores per position) and the
double-heads model (the language model plus a multiple-choice head), saved by transformers' own
classes, load, verify against those classes, go back to them through ``--to hf`` with equal
scores, and are refused by formats that cannot hold them."""

import json
import warnings

import pytest
import torch
import transformers
from checkpoints import TINY

from gpt2port import ConfigError, convert, generate, inspect, load_pretrained, verify

IDS = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(3))
KINDS = {"GPT2ForTokenClassification": {"num_labels": 5},
         "GPT2ForQuestionAnswering": {},
         "GPT2DoubleHeadsModel": {"summary_activation": "tanh"}}
WHAT = {"GPT2ForTokenClassification": "token classifier",
        "GPT2ForQuestionAnswering": "question-answering model",
        "GPT2DoubleHeadsModel": "multiple-choice head"}


def scores(model, ids: torch.Tensor) -> torch.Tensor:
    """transformers' scores per position: logits, or start and end stacked as the head makes
    them."""
    with torch.no_grad():
        found = model(ids)
    if hasattr(found, "logits"):
        return found.logits
    return torch.stack([found.start_logits, found.end_logits], dim=-1)


@pytest.fixture(scope="module", params=KINDS)
def saved(request, tmp_path_factory):
    """A model of transformers' class, every tensor random (norms and the head's bias too),
    saved by its own save_pretrained, with class names."""
    kind = request.param
    torch.manual_seed(1)
    labels = {"id2label": {i: f"tag{i}" for i in range(5)}} if "num_labels" in KINDS[kind] else {}
    model = getattr(transformers, kind)(transformers.GPT2Config(**TINY, **KINDS[kind],
                                                                **labels)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    folder = tmp_path_factory.mktemp("heads") / kind
    model.save_pretrained(folder)
    return kind, folder, model


def test_the_head_computes_what_transformers_computes(saved):
    kind, folder, theirs = saved
    ours = load_pretrained(folder)
    assert ours.config["task"] != "language_model"
    with torch.no_grad():
        difference = (ours(IDS) - scores(theirs, IDS)).abs().max().item()
        assert difference < 1e-5, difference
        if kind == "GPT2DoubleHeadsModel":  # each row a choice, scored at its last token
            expected = theirs(IDS[None]).mc_logits[0]
            assert (ours.choice_scores(IDS)[:, 0] - expected).abs().max() < 1e-5


@pytest.mark.parametrize("reference", ["transformers", "numpy"])
def test_verify_runs_its_own_class(saved, reference):
    kind, folder, _ = saved
    result = verify(folder, reference=reference)
    assert result.passed, result.report()
    if reference == "transformers":
        assert kind in result.reference
    if kind == "GPT2DoubleHeadsModel":  # the choice score is compared too
        assert result.choice_diff is not None and "multiple-choice score" in result.report()


def test_the_head_goes_back_to_its_own_class(saved, tmp_path):
    kind, folder, theirs = saved
    exported = convert(folder, tmp_path / "hf", to="hf")
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == [kind]
    back = getattr(transformers, kind).from_pretrained(exported).eval()
    assert torch.equal(scores(back, IDS), scores(theirs, IDS))
    assert back.config.id2label == theirs.config.id2label
    if kind == "GPT2DoubleHeadsModel":
        with torch.no_grad():
            assert torch.equal(back(IDS[None]).mc_logits, theirs(IDS[None]).mc_logits)
    native = convert(folder, tmp_path / "native", to="native")
    with torch.no_grad():
        assert torch.equal(load_pretrained(native)(IDS), load_pretrained(folder)(IDS))


@pytest.mark.parametrize("to", ["book", "gguf", "nanogpt", "llmc", "openai", "tlens"])
def test_formats_without_the_head_refuse_by_what_it_is(saved, to, tmp_path):
    kind, folder, _ = saved
    what = WHAT[kind]
    with pytest.raises(ConfigError) as refused, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(folder, tmp_path / "out", to=to)
    assert what in refused.value.message and "hf" in refused.value.hint
    assert not (tmp_path / "out").exists()


def test_generate_and_text_checks_refuse_what_is_not_a_language_model(saved):
    kind, folder, theirs = saved
    model = load_pretrained(folder)
    if kind == "GPT2DoubleHeadsModel":  # a language model too: it generates as transformers
        prompt = IDS[:1, :4]
        expected = theirs.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(generate(model, prompt, 6), expected)
        assert "a multiple-choice head of 1 score(s), tanh" in inspect(folder)
        return
    with pytest.raises(ConfigError, match="does not predict tokens") as refused:
        generate(model, IDS[:1, :4], 3)
    assert "every position's scores" in refused.value.hint
    with pytest.raises(ConfigError, match="compares next-token logits"):
        verify(folder, reference="numpy", text="a text of a few words")
    assert "every position's row is read" in inspect(folder)


def test_a_token_classifier_without_architectures_is_told_by_its_tensors(saved, tmp_path):
    _, folder, theirs = saved
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    del config["architectures"]
    (copy / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        assert (load_pretrained(copy)(IDS) - scores(theirs, IDS)).abs().max() < 1e-5
