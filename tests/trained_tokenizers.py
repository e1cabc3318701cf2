"""Small tokenizers of the kinds the Hub's GPT-2s of other languages hold, trained here with
the ``tokenizers`` and ``sentencepiece`` packages and saved as those repos keep them: raw files
(``vocab.txt``, ``spiece.model``, ``vocab.json`` + ``merges.txt``) with transformers'
``tokenizer_config.json``, and no ``tokenizer.json``."""

from __future__ import annotations

import io
import json
from pathlib import Path

SAMPLE = (Path(__file__).resolve().parents[1] / "gpt2port" / "data" / "sample.txt").read_text()
OTHER_LANGUAGES = ("这是很久之前的事情了。我们在北京的一个小公园里见面。",
                   "昔々、ある村に心優しいおじいさんとおばあさんが住んでいました。",
                   "Über den Wolken muss die Freiheit wohl grenzenlos sein, sagte Müller.",
                   "Il gatto è salito sull'albero più alto del giardino.")
CORPUS = [*SAMPLE.splitlines(), *OTHER_LANGUAGES * 20]
# texts the tests encode: every language above, digits, spaces and punctuation runs
TEXTS = ("The dog was found in a field near the town of Springfield, 1871.",
         "  Leading spaces,\ttabs\nand new lines!!  ", *OTHER_LANGUAGES,
         "Mixed: 北京 and Müller's café — 42 % off?")


def _config(folder: Path, **values) -> None:
    (folder / "tokenizer_config.json").write_text(json.dumps(values, ensure_ascii=False))


def wordpiece(folder: Path, *, lowercase: bool = True, size: int = 500) -> Path:
    """BERT's WordPiece as the Chinese GPT-2s hold it: vocab.txt, BertTokenizer."""
    from tokenizers import BertWordPieceTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=lowercase)
    trainer.train_from_iterator(CORPUS, vocab_size=size, min_frequency=1)
    vocab = sorted(trainer.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab),
                                      encoding="utf-8")
    _config(folder, tokenizer_class="BertTokenizer", do_lower_case=lowercase,
            unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
            mask_token="[MASK]")
    return folder


def sentencepiece(folder: Path, *, size: int = 300, model_type: str = "unigram",
                  normalization: str = "nmt_nfkc") -> Path:
    """A SentencePiece model as the Japanese GPT-2s hold it: spiece.model, T5Tokenizer, no
    extra ids; T5's special ids (pad 0, eos 1, unk 2), which transformers' T5 tokenizer
    assumes. A unigram model, as theirs are (transformers 5 reads any spiece.model as unigram,
    so a BPE one with byte fallback encodes differently there than in sentencepiece)."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=size,
        model_type=model_type, normalization_rule_name=normalization, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    _config(folder, tokenizer_class="T5Tokenizer", extra_ids=0, eos_token="</s>",
            unk_token="<unk>", pad_token="<pad>")
    return folder


def byte_level_bpe(folder: Path, *, size: int = 500) -> Path:
    """A byte-level BPE of its own as the German, Italian and Russian GPT-2s hold it:
    vocab.json + merges.txt trained by the tokenizers library (<|endoftext|> first, id 0)."""
    from tokenizers import ByteLevelBPETokenizer

    folder.mkdir(parents=True, exist_ok=True)
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(CORPUS, vocab_size=size, min_frequency=2,
                                special_tokens=["<|endoftext|>"])
    trainer.save_model(str(folder))
    _config(folder, tokenizer_class="GPT2Tokenizer", bos_token="<|endoftext|>",
            eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    return folder


KINDS = {"wordpiece": wordpiece, "wordpiece-cased": lambda folder: wordpiece(folder,
                                                                            lowercase=False),
         "sentencepiece": sentencepiece,
         "byte-level-bpe": byte_level_bpe,
         # no normalizer charsmap: the gguf package parses its 240,000 bytes one by one (seconds)
         "sentencepiece-unnormalized": lambda folder: sentencepiece(folder,
                                                                    normalization="identity")}


def model_with_tokenizer(kind: str, folder: Path, seed: int = 0) -> Path:
    """A Hub-layout checkpoint (every tensor random) whose vocabulary is a trained tokenizer of
    ``kind``, its files beside the weights, its config naming the tokenizer's special ids."""
    import torch
    from checkpoints import reference_model, write_hub_layout
    from transformers import AutoTokenizer

    tokenizer_folder = KINDS[kind](folder.parent / f"{folder.name}-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (
        tokenizer.cls_token_id)
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else (
        tokenizer.sep_token_id)
    model = reference_model(seed, vocab_size=len(tokenizer), bos_token_id=start,
                            eos_token_id=end)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    write_hub_layout(model, folder, tokenizer=False)
    for path in tokenizer_folder.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder
