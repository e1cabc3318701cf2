"""Classifier heads: the book's ch. 6 classifier and transformers' GPT2ForSequenceClassification,
read, verified and written, against the book's own ``GPTModel`` and transformers."""

import json
import subprocess
import sys
import warnings

import pytest
import torch
from checkpoints import TINY
from other_projects import the_book
from transformers import (
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from gpt2port import GPT_CONFIG_124M, ConfigError, GPTModel, generate, load_pretrained
from gpt2port.conversion import ConversionWarning, convert
from gpt2port.inspection import describe
from gpt2port.loading import open_checkpoint
from gpt2port.proof.verification import verify_model

BOOK_CONFIG = {"vocab_size": 512, "context_length": 64, "emb_dim": 64, "n_heads": 4,
               "n_layers": 2, "drop_rate": 0.0, "qkv_bias": True}
IDS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(5))


def books_classifier(classes: int = 2, seed: int = 0):
    """ch. 6: the book's GPTModel with ``out_head`` replaced by a Linear of ``classes`` outputs."""
    torch.manual_seed(seed)
    model = the_book().GPTModel(BOOK_CONFIG)
    model.out_head = torch.nn.Linear(BOOK_CONFIG["emb_dim"], classes)
    torch.nn.init.normal_(model.out_head.bias, std=0.5)
    return model.eval()


def write_books_classifier(folder, classes: int = 2):
    """``review_classifier.pth`` and the book's config dict beside it, as ch. 6 saves them."""
    model = books_classifier(classes)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "review_classifier.pth")
    (folder / "config.json").write_text(json.dumps(BOOK_CONFIG))
    return model


def last_token_scores(model, ids=IDS):
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out[:, -1]


def transformers_classifier(folder, labels=("negative", "neutral", "positive")):
    """A GPT2ForSequenceClassification saved by its own save_pretrained."""
    torch.manual_seed(1)
    config = GPT2Config(**TINY, num_labels=len(labels), pad_token_id=TINY["eos_token_id"],
                        id2label=dict(enumerate(labels)),
                        label2id={label: i for i, label in enumerate(labels)})
    model = GPT2ForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    return model


def test_the_config_builds_the_books_ch6_classifier():
    ours = GPTModel({**GPT_CONFIG_124M, "output_size": 2, "output_bias": True})
    theirs = the_book().GPTModel({**GPT_CONFIG_124M, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
                            "drop_rate": 0.1})
    theirs.out_head = torch.nn.Linear(768, 2)
    assert ours.output_head.weight.shape == theirs.out_head.weight.shape == (2, 768)
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in theirs.parameters())


def test_the_books_classifier_loads_verifies_and_inspects(tmp_path):
    theirs = write_books_classifier(tmp_path / "run")
    model = load_pretrained(tmp_path / "run")
    assert (model.config["output_size"], model.config["output_bias"]) == (2, True)
    assert torch.allclose(last_token_scores(model), last_token_scores(theirs), atol=1e-5)
    result = verify_model(model, tmp_path / "run")
    assert result.passed, result.report()
    summary = describe(open_checkpoint(tmp_path / "run")).splitlines()[-1]
    assert summary.startswith("head: a text classifier, 2 classes") and "bias" in summary


def test_the_books_classifier_to_hf_is_a_sequence_classifier(tmp_path):
    theirs = write_books_classifier(tmp_path / "run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported = convert(tmp_path / "run", tmp_path / "hf", to="hf")
    said = [str(w.message) for w in caught if w.category is ConversionWarning]
    assert any("output_bias" in message and "shift absorbs it" in message for message in said)
    hf_config = json.loads((exported / "config.json").read_text())
    assert hf_config["architectures"] == ["GPT2ForSequenceClassification"]
    hf = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    assert isinstance(hf, GPT2ForSequenceClassification)
    # one prompt at a time: the book classifies the last position, padding or not
    for row in IDS:
        assert torch.allclose(last_token_scores(hf, row[None]), last_token_scores(theirs, row[None]),
                              atol=1e-5)


def test_a_sequence_classifier_loads_verifies_and_converts_to_the_book(tmp_path):
    theirs = transformers_classifier(tmp_path / "hf")
    model = load_pretrained(tmp_path / "hf")
    assert model.config["output_labels"] == ["negative", "neutral", "positive"]
    for row in IDS:
        ours = model(row[None])[:, -1]
        assert torch.allclose(ours, last_token_scores(theirs, row[None]), atol=1e-5)
    result = verify_model(model, tmp_path / "hf", reference="transformers")
    assert result.passed and "GPT2ForSequenceClassification" in result.reference

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported = convert(tmp_path / "hf", tmp_path / "book", to="book")
    said = " ".join(str(w.message) for w in caught)
    assert "output_labels" in said and "output_bias False -> True" in said
    book_config = json.loads((exported / "config.json").read_text())
    books = the_book().GPTModel(book_config)
    books.out_head = torch.nn.Linear(book_config["emb_dim"], 3)
    books.load_state_dict(torch.load(exported / "model.pth", weights_only=True), strict=True)
    for row in IDS:
        assert torch.allclose(books.eval()(row[None])[:, -1], last_token_scores(theirs, row[None]),
                              atol=1e-5)


def test_labels_survive_hf_to_native_to_hf(tmp_path):
    transformers_classifier(tmp_path / "hf")
    native = convert(tmp_path / "hf", tmp_path / "native", to="native")
    again = convert(native, tmp_path / "hf2", to="hf")
    hf = AutoModelForSequenceClassification.from_pretrained(again)
    assert hf.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}


@pytest.mark.parametrize("target", ["gguf", "openai", "nanogpt", "llmc"])
def test_formats_without_a_classifier_head_refuse_before_writing(target, tmp_path):
    write_books_classifier(tmp_path / "run")
    with pytest.raises(ConfigError, match="classifier") as refused:
        convert(tmp_path / "run", tmp_path / "out", to=target)
    assert "book" in refused.value.hint and "hf" in refused.value.hint
    assert not (tmp_path / "out").exists()


def test_a_vocabulary_head_with_a_bias_is_refused_by_hf(tmp_path):
    torch.manual_seed(0)
    model = GPTModel({**BOOK_CONFIG, "output_bias": True})
    from gpt2port.formats import BY_NAME  # written in gpt2port's own layout, which holds it
    folder = tmp_path / "native"
    folder.mkdir()
    BY_NAME["native"].write(model, folder, dtype=None)
    with pytest.raises(ConfigError, match="no shift absorbs it"):
        convert(folder, tmp_path / "hf", to="hf")


def test_generate_refuses_a_classifier(tmp_path):
    write_books_classifier(tmp_path / "run")
    with pytest.raises(ConfigError, match="classifier"):
        generate(load_pretrained(tmp_path / "run"), IDS[:1], 3)
    run = subprocess.run([sys.executable, "-m", "gpt2port", "generate", str(tmp_path / "run"),
                          "The dog"], check=False, capture_output=True, text=True)
    assert run.returncode == 3 and "classifier" in run.stderr and "Traceback" not in run.stderr
