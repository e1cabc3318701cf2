"""Hugging Face's GPT-2 layout (``GPT2LMHeadModel``): its tensor names, transforms and config keys.

Conv1D layers store weights as [in, out], the transpose of ``nn.Linear``; ``c_attn`` packs the
query, key and value projections side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ACTIVATIONS, TASKS, is_classifier
from ..errors import CheckpointError, ConfigError
from ..io.arrays import Arrays
from ..io.readers import read_json
from ..io.writers import write_safetensors
from ..text.tokenizer import END_OF_TEXT_ID
from ..text.vocabulary import Vocabulary
from .base import (
    Candidate,
    ConfigKey,
    ConfigTable,
    Format,
    Raw,
    later,
    safetensors_later,
    torch_loaded,
)
from .table import MappingTable
from .tf_flax import FLAX_WEIGHTS, TF_WEIGHTS, framework_later, read_framework_weights

# Weights files of a Hugging Face folder, in order of preference: PyTorch's, then those of
# transformers' TensorFlow and Flax classes
WEIGHTS_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    TF_WEIGHTS,
    FLAX_WEIGHTS,
)
LINES = """
    token_embedding_table.weight        wte.weight
    position_embedding_table.weight     wpe.weight
    attention_norm.scale                h.{}.ln_1.weight
    attention_norm.shift                h.{}.ln_1.bias
    attention.qkv.weight                h.{}.attn.c_attn.weight   transpose, split
    attention.qkv.bias                  h.{}.attn.c_attn.bias     split
    attention.output_projection.weight  h.{}.attn.c_proj.weight   transpose
    attention.output_projection.bias    h.{}.attn.c_proj.bias
    feed_forward_norm.scale             h.{}.ln_2.weight
    feed_forward_norm.shift             h.{}.ln_2.bias
    feed_forward.expansion.weight       h.{}.mlp.c_fc.weight      transpose
    feed_forward.expansion.bias         h.{}.mlp.c_fc.bias
    feed_forward.contraction.weight     h.{}.mlp.c_proj.weight    transpose
    feed_forward.contraction.bias       h.{}.mlp.c_proj.bias
    layer_norm.scale                    ln_f.weight
    layer_norm.shift                    ln_f.bias
    output_head.weight                  lm_head.weight
    """
BODY_PREFIX = "transformer."
OPTIONS = {
    # Causal-mask buffers older transformers saved with the weights; they hold no weights.
    "ignored": ("h.{}.attn.bias", "h.{}.attn.masked_bias"),
    # save_pretrained writes the body under "transformer."; the Hub file does not.
    "optional_prefixes": (BODY_PREFIX,),
}
# transformers' class for each task (config.TASKS), and its head: every class has GPT-2's body;
# the head is [num_labels, D], with a bias where it reads every position
CLASSES = {"language_model": "GPT2LMHeadModel",
           "text_classification": "GPT2ForSequenceClassification",
           "token_classification": "GPT2ForTokenClassification",
           "question_answering": "GPT2ForQuestionAnswering",
           "multiple_choice": "GPT2DoubleHeadsModel"}
HEADS = {"language_model": "lm_head", "text_classification": "score",
         "token_classification": "classifier", "question_answering": "qa_outputs",
         "multiple_choice": "lm_head"}
BIASED_HEADS = ("token_classification", "question_answering")
CHOICE_HEAD = "multiple_choice_head.summary"  # the double-heads model's second head
CHOICE_LINES = f"""
    choice_head.weight                  {CHOICE_HEAD}.weight
    choice_head.bias                    {CHOICE_HEAD}.bias
    """
TABLES = {task: MappingTable.parse(
    "huggingface", LINES.replace("lm_head", head) + (
        f"output_head.bias  {head}.bias\n" if task in BIASED_HEADS else "") + (
        CHOICE_LINES if task == "multiple_choice" else ""), **OPTIONS)
    for task, head in HEADS.items()}
# the double-heads model's summary_* keys gpt2port computes: the head on the choice's last token
# (or mc_token_ids), projected to num_labels (1), then none or tanh
SUMMARY = {"summary_type": "cls_index", "summary_use_proj": True,
           "summary_proj_to_labels": True}
TABLE = TABLES["language_model"]  # lm_head.weight absent when tied

# activation_function -> the model's (activation, gelu_approximation); the first of each is written
ACTIVATION_FUNCTIONS = {
    "gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"),
    "gelu": ("gelu", "none"), "gelu_python": ("gelu", "none"),
    **{name: (name, "tanh") for name in ACTIVATIONS if name != "gelu"},
    "swish": ("silu", "tanh"),
}
# config.json key <-> model config key, with the default GPT2Config assumes when a key is absent;
# activation_function values -> the model's gelu_approximation (the first of each is written).
CONFIG_TABLE = ConfigTable((
    ConfigKey("vocab_size", "vocab_size", 50257),
    ConfigKey("n_positions", "context_length", 1024),
    ConfigKey("n_embd", "embedding_dimension", 768),
    ConfigKey("n_head", "number_of_heads", 12),
    ConfigKey("n_layer", "number_of_layers", 12),
    ConfigKey("resid_pdrop", "dropout_rate", 0.1),
    ConfigKey("layer_norm_epsilon", "layer_norm_epsilon", 1e-5),
    ConfigKey("activation_function", ("activation", "gelu_approximation"), "gelu_new",
              values=ACTIVATION_FUNCTIONS, values_are="a function transformers' GPT-2 computes"),
    ConfigKey("n_inner", "feed_forward_width", None),
    ConfigKey("scale_attn_weights", "attention_scaled_by_head_width", True),
    ConfigKey("scale_attn_by_inverse_layer_idx", "attention_scaled_by_layer", False),
), assumes={"bias": True, "qkv_bias": True},
   derived={"tie_output_head": "the tensors: no `lm_head.weight`, or one equal to `wte`; "
                               "written as `tie_word_embeddings`"})
HINT = "gpt2port loads the GPT-2 architecture only"
# transformers' GPT-2 classes gpt2port reads, and those it refuses by what they are
READ_CLASSES = ("GPT2Model", *CLASSES.values())


def config_to_model(hf_config: dict, *, origin: str) -> dict:
    """A ``config.json`` dict -> the model config (the head tied, as GPT-2's is).

    Raises:
        ConfigError: for a non-GPT-2 model or an option this model does not implement.
    """
    check_architecture(hf_config, origin=origin)
    return CONFIG_TABLE.to_model(hf_config, origin=origin, extra={"tie_output_head": True})


def check_architecture(hf_config: object, *, origin: str) -> None:
    """Raise ConfigError for a non-GPT-2 ``config.json`` or an option this model does not
    implement."""
    if not isinstance(hf_config, dict):
        raise ConfigError(f"{origin}: the config is not a dict", hint=HINT)
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise ConfigError(f"{origin}: model_type is {hf_config['model_type']!r}, not 'gpt2': "
                          "another architecture", hint=HINT)
    if hf_config.get("auto_map"):
        raise ConfigError(f"{origin}: a model with code of its own (auto_map names "
                          f"{', '.join(map(str, dict(hf_config['auto_map']).values()))}), not "
                          "transformers' GPT-2", hint="gpt2port runs transformers' GPT-2 "
                          "architecture only; the repository's code defines this one")
    if hf_config.get("add_cross_attention"):
        raise ConfigError(f"{origin}: a cross-attention decoder (add_cross_attention=True: the "
                          "decoder half of an encoder-decoder model)",
                          hint="gpt2port loads GPT-2's decoder-only model")
    classes = hf_config.get("architectures") or []
    for name in classes if isinstance(classes, list) else [classes]:
        if name not in READ_CLASSES:
            raise ConfigError(f"{origin}: architectures names {name!r}, not a GPT-2 class "
                              f"gpt2port reads ({', '.join(READ_CLASSES)})", hint=HINT)


def choice_config(hf_config: dict, origin: str) -> dict:
    """The double-heads model's ``summary_*`` keys -> the model config's choice keys.

    Raises:
        ConfigError: for a summary gpt2port does not compute (by the key).
    """
    for key, value in SUMMARY.items():
        if hf_config.get(key, value) != value:
            raise ConfigError(f"{origin}: {key}={hf_config[key]!r}: gpt2port computes the "
                              f"multiple-choice head with {key}={value!r}",
                              hint="convert it with transformers, or ask for this summary")
    activation = hf_config.get("summary_activation")
    if activation not in (None, "tanh"):
        raise ConfigError(f"{origin}: summary_activation={activation!r}: gpt2port computes "
                          "none or 'tanh'", hint="convert it with transformers")
    return {"choice_activation": activation}


def task_of(tensors: dict) -> str:
    """The task whose head ``tensors`` hold (a language model's head may be left out: tied)."""
    if any(name.endswith(f"{CHOICE_HEAD}.weight") for name in tensors):
        return "multiple_choice"
    for task, head in HEADS.items():
        if f"{head}.weight" in tensors or f"{BODY_PREFIX}{head}.weight" in tensors:
            return task
    return "language_model"


def config_from_model(config: dict, roles: dict[str, int] | None = None) -> dict:
    """The model config -> a ``config.json`` that transformers' class for its task
    (``CLASSES``) loads; ``roles``: the tokenizer's bos/eos/pad ids
    (default: GPT-2's <|endoftext|> where the vocabulary has it)."""
    dropout = config["dropout_rate"]
    end_of_text = END_OF_TEXT_ID if config["vocab_size"] > END_OF_TEXT_ID else None
    roles = roles or {"bos": end_of_text, "eos": end_of_text}
    hf_config = {
        "architectures": [CLASSES[config["task"]]],
        "model_type": "gpt2",
        **CONFIG_TABLE.from_model({**config, "vocab_size": config["padded_vocab_size"]}),
        "tie_word_embeddings": config["tie_output_head"],
        "n_ctx": config["context_length"],
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "bos_token_id": roles.get("bos"),
        "eos_token_id": roles.get("eos"),
    }
    if "pad" in roles:
        hf_config["pad_token_id"] = roles["pad"]
    if config["task"] == "multiple_choice":
        hf_config.update(SUMMARY, summary_activation=config["choice_activation"],
                         num_labels=config["choice_outputs"])
    if is_classifier(config):
        labels = config["output_labels"] or [f"LABEL_{i}" for i in range(config["output_size"])]
        # the book's ch. 6 pads with <|endoftext|>; transformers scores the last non-pad token
        hf_config.update(id2label=dict(enumerate(labels)),
                         label2id={label: i for i, label in enumerate(labels)})
        hf_config.setdefault("pad_token_id", end_of_text)
    return hf_config


def labels_from(hf_config: dict, origin: str) -> list[str] | None:
    """A classifier's class names from ``id2label``; None for transformers' defaults."""
    id2label = hf_config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        labels = [id2label[str(i)] if str(i) in id2label else id2label[i]
                  for i in range(len(id2label))]
    except KeyError:
        raise ConfigError(f"{origin}: id2label's keys are not 0..{len(id2label) - 1}",
                          hint="id2label maps each class index to its name") from None
    return None if labels == [f"LABEL_{i}" for i in range(len(labels))] else labels


def write_generation_config(folder: Path, hf_config: dict) -> None:
    """What ``save_pretrained`` writes beside the config: ``generate()`` stops at the end
    token."""
    (folder / "generation_config.json").write_text(json.dumps(
        {key: hf_config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")
         if key in hf_config}, indent=2))


def find_weights(folder: Path) -> Path | None:
    """The weights file a Hugging Face folder holds, in order of preference."""
    return next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)


class HuggingFace(Format):
    name = "hf"
    name_table = TABLE
    config_table = CONFIG_TABLE
    title = "Hugging Face (`GPT2LMHeadModel`)"
    summary = ("`config.json` + `model.safetensors` (also sharded, or `pytorch_model.bin`), "
               "Conv1D `[in, out]` weights; read also: `tf_model.h5` (TensorFlow, with h5py) and "
               "`flax_model.msgpack` (Flax)")
    vocabulary = "rows"
    cannot_represent = ("a model without biases (written as zero biases: exact); a padded "
                        "vocabulary (its padding rows become ordinary ids); a head bias on a "
                        "language model or text classifier (a classifier's moves into the "
                        "final norm's shift, the change stated; refused for a vocabulary head)")
    proof = ("transformers' `GPT2LMHeadModel.from_pretrained` reads the export: logits "
             "bit-equal; a classifier loads in `AutoModelForSequenceClassification` with the "
             "book model's last-token scores (within 1e-5); token classifiers and question "
             "answering go back to their own classes with equal scores")
    read_by_transformers = True
    reference_reads_with = ("the safetensors library, torch.load, h5py (tf_model.h5) or the "
                            "msgpack package (flax_model.msgpack)")
    config_hint = HINT
    holds_classifier = True  # GPT2ForSequenceClassification's score.weight, no bias
    holds_labels = True
    tasks = tuple(TASKS)

    def recognises(self, candidate: Candidate) -> bool:
        path = candidate.path
        if path.is_dir():
            return find_weights(path) is not None
        return path.name.endswith(".index.json") or path.suffix in (
            ".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")

    def transformers_reads(self, path: Path) -> bool:
        """A folder of PyTorch weights (transformers 5 reads no TensorFlow or Flax weights)."""
        weights = find_weights(Path(path)) if Path(path).is_dir() else None
        return weights is not None and weights.name not in (TF_WEIGHTS, FLAX_WEIGHTS)

    def read_raw(self, candidate: Candidate) -> Raw:
        path = candidate.path
        weights = find_weights(path) if path.is_dir() else path
        if weights.suffix not in (".json", ".h5", ".msgpack") and not (
                candidate.is_safetensors or candidate.is_pickle or path.is_dir()):
            first = candidate.magic[:4]
            raise CheckpointError(
                f"{path}: neither a PyTorch pickle, a safetensors file nor llm.c's model file "
                f"(it starts with bytes {first.hex(' ') or 'nothing'})",
                hint="point at a checkpoint of one of the formats in docs/formats.md")
        config_path = weights.parent / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{weights}: no config.json beside it",
                                  hint="put the model's config.json in the same folder")
        hf_config = read_json(config_path)
        check_architecture(hf_config, origin=str(config_path))
        tensors = read_framework_weights(weights)
        task = task_of(tensors)
        if task == "language_model":
            return Raw(str(weights), tensors, hf_config, config_origin=str(config_path))
        if task == "multiple_choice":
            rows = next(tensor.shape[0] for name, tensor in tensors.items()
                        if name.endswith(f"{CHOICE_HEAD}.weight"))
            return Raw(str(weights), tensors, hf_config, config_origin=str(config_path),
                       name_table=TABLES[task], extra={
                           "task": task, "choice_outputs": rows,
                           **choice_config(hf_config, str(config_path))})
        return Raw(str(weights), tensors, hf_config, config_origin=str(config_path),
                   name_table=TABLES[task],
                   extra={"output_labels": labels_from(hf_config, str(config_path)),
                          "task": task, "output_bias": task in BIASED_HEADS})

    def table_for(self, config: dict) -> MappingTable:
        return TABLES[config["task"]]

    def held_config(self, config: dict) -> dict:
        """As the base holds it; a head has a bias exactly where transformers' class has one."""
        held = super().held_config(config)
        held["output_bias"] = held["task"] in BIASED_HEADS
        return held

    def write_raw(self, destination: Path, tensors, config: dict, *, dtype: str | None,
                  vocabulary: Vocabulary | None) -> None:
        """``config.json``, ``generation_config.json`` and ``model.safetensors`` in the Hub's
        layout (no prefix; a tied head left out, as on the Hub) for
        ``GPT2LMHeadModel.from_pretrained``."""
        hf_config = config_from_model(config, vocabulary.roles if vocabulary else None)
        (destination / "config.json").write_text(json.dumps(hf_config, indent=2))
        write_generation_config(destination, hf_config)
        # a classifier's body under "transformer.", as save_pretrained writes it (without the
        # prefix, from_pretrained takes the file for a bare GPT2Model and leaves score random)
        prefix = BODY_PREFIX if config["task"] != "language_model" else ""
        heads = (f"{HEADS[config['task']]}.", "multiple_choice_head.")
        write_safetensors(destination / "model.safetensors", tensors, metadata={"format": "pt"},
                          names={name: prefix + name for name in tensors.shapes
                                 if not name.startswith(heads)})

    def reference_tensors(self, path: Path) -> tuple[Arrays, dict]:
        """The files read by the safetensors library (or ``torch.load``), each tensor when the
        reference needs it."""
        weights = find_weights(path) if path.is_dir() else path
        files = [weights]
        if weights.name.endswith(".index.json"):
            weight_map = json.loads(weights.read_text())["weight_map"]
            files = [weights.parent / shard for shard in sorted(set(weight_map.values()))]
        makers, shapes = {}, {}
        for file in files:
            if file.suffix == ".safetensors":
                found, found_shapes = safetensors_later(file)
            elif file.suffix in (".h5", ".msgpack"):
                found, found_shapes = framework_later(file)
            else:
                state = torch_loaded(file)
                found = {name: later(tensor) for name, tensor in state.items()}
                found_shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
            for name, maker in found.items():
                makers[name.removeprefix(BODY_PREFIX)] = maker
                shapes[name.removeprefix(BODY_PREFIX)] = found_shapes[name]
        config_path = weights.parent / "config.json"
        hf_config = read_json(config_path)
        task = task_of(shapes)
        if task == "language_model":
            return Arrays(makers), config_to_model(hf_config, origin=str(config_path))
        check_architecture(hf_config, origin=str(config_path))
        if task == "multiple_choice":  # the choice head by the reference's name: [K, D]
            makers["choice.weight"] = makers.pop(f"{CHOICE_HEAD}.weight")
            makers["choice.bias"] = makers.pop(f"{CHOICE_HEAD}.bias")
            return Arrays(makers), CONFIG_TABLE.to_model(hf_config, origin=str(config_path),
                                                         extra={
                "tie_output_head": "lm_head.weight" not in makers, "task": task,
                "choice_outputs": shapes[f"{CHOICE_HEAD}.weight"][0],
                **choice_config(hf_config, str(config_path))})
        for kind in ("weight", "bias"):  # the head by the reference's name: [num_labels, D]
            if f"{HEADS[task]}.{kind}" in makers:
                makers[f"lm_head.{kind}"] = makers.pop(f"{HEADS[task]}.{kind}")
        return Arrays(makers), CONFIG_TABLE.to_model(hf_config, origin=str(config_path), extra={
            "tie_output_head": False, "output_size": shapes[f"{HEADS[task]}.weight"][0],
            "task": task, "output_bias": task in BIASED_HEADS})
