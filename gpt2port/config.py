"""Model configs in the book's dict style, their validation, and the named presets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ConfigError

GPT_CONFIG_124M = {
    "vocab_size": 50257,  # vocabulary size of the GPT-2 BPE tokenizer
    "context_length": 1024,  # longest sequence the position table covers
    "embedding_dimension": 768,  # width of every token's vector
    "number_of_heads": 12,  # attention heads per block
    "number_of_layers": 12,  # transformer blocks
    "dropout_rate": 0.1,  # dropout after embeddings, attention and feed-forward
    "qkv_bias": False,  # bias in the query, key and value projections
}

# Keys a config may add to the book's seven, with their defaults (GPT-2's own choices).
OPTIONAL_KEYS = {
    "layer_norm_epsilon": 1e-5,
    "tie_output_head": False,  # output head shares its weight with the token embedding table
    "bias": True,  # bias in the output, feed-forward and layer-norm layers (nanoGPT: False)
    "gelu_approximation": "tanh",  # GPT-2's tanh GELU; "none" is the exact erf GELU (nanoGPT)
    "padded_vocab_size": None,  # rows of the embedding and head; None: vocab_size. Ids from
    # vocab_size up are padding (nanoGPT's and llm.c's 50304): generation never picks them
    "output_size": None,  # rows of the output head; None: padded_vocab_size. Fewer rows make
    # a classifier (the book's ch. 6 head, transformers' GPT2ForSequenceClassification)
    "output_bias": False,  # a bias in the output head (the book's classifier; TransformerLens)
    "output_labels": None,  # a classifier's class names, one per output (None: unnamed)
    "task": None,  # what the head's scores are for (TASKS); None: a language model, or a text
    # classifier when output_size is not the vocabulary
    "choice_outputs": 0,  # a multiple-choice head beside the language-model head, read at a
    # choice's last token (transformers' GPT2DoubleHeadsModel: 1 score); 0: none
    "choice_activation": None,  # after the multiple-choice head: None or "tanh"
    # variants the Hub's GPT-2s train (GPT-2's own choices are the defaults):
    "feed_forward_width": None,  # the feed-forward's hidden width; None: 4 x embedding_dimension
    "activation": "gelu",  # the feed-forward's function; "gelu": the one gelu_approximation names
    "attention_scaled_by_head_width": True,  # scores divided by sqrt(head width)
    "attention_scaled_by_layer": False,  # scores also divided by (layer index + 1)
}
# The feed-forward functions a GPT-2 config names (transformers' activation_function values),
# besides "gelu": each computes as transformers' function of that name does.
ACTIVATIONS = ("gelu", "gelu_fast", "quick_gelu", "relu", "silu", "tanh", "sigmoid", "mish",
               "relu6", "linear")
# What a model's scores are for -> in words. A text classifier reads the last token's scores;
# token classification and question answering (start and end scores) read every position's.
TASKS = {
    "language_model": "a language model",
    "text_classification": "a text classifier",
    "token_classification": "a token classifier (a label per position)",
    "question_answering": "a question-answering model (start and end scores per position)",
    "multiple_choice": "a language model with a multiple-choice head (a double-heads model)",
}
# What GPT-2 itself computes: a format that stores none of these keys assumes these values.
GPT2_VARIANT = {"feed_forward_width": None, "activation": "gelu",
                "attention_scaled_by_head_width": True, "attention_scaled_by_layer": False}
# The book's key names (ch. 4's GPT_CONFIG_124M) -> ours; a config may use either.
BOOK_KEYS = {
    "emb_dim": "embedding_dimension",
    "n_heads": "number_of_heads",
    "n_layers": "number_of_layers",
    "drop_rate": "dropout_rate",
}
GELU_APPROXIMATIONS = ("tanh", "none")
# GPT-2's released widths and their head counts, to infer a config from tensor shapes alone.
GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}

LARGEST_SIZE = 2**24  # per size: GPT-2 XL's largest is 50,257; beyond this tensor sizes overflow
_POSITIVE_INTEGERS = (
    "vocab_size",
    "context_length",
    "embedding_dimension",
    "number_of_heads",
    "number_of_layers",
)


def validate_config(config: dict, *, names: dict[str, str] | None = None) -> dict:
    """Return a complete copy of ``config`` with defaults filled in.

    ``names`` maps model config keys to the keys the user wrote (a checkpoint's ``n_head``...):
    problems name those.

    Raises:
        ConfigError: listing every unknown or missing key and every value that cannot work.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"a model config must be a dict, got {type(config).__name__}")
    problems = config_problems(config, names=names)
    if problems:
        raise ConfigError("model config cannot work: " + "; ".join(problems),
                          hint=config_hint(problems, names=names))
    return complete_config(config)


def complete_config(config: dict) -> dict:
    """``config``, known to be free of problems (``config_problems``), with defaults filled in
    and the book's key names as ours."""
    complete = {**OPTIONAL_KEYS, **_from_book_keys(config)[0]}
    if complete["padded_vocab_size"] is None:
        complete["padded_vocab_size"] = complete["vocab_size"]
    if complete["output_size"] is None:
        complete["output_size"] = (2 if complete["task"] == "question_answering" else
                                   complete["padded_vocab_size"])
    if complete["feed_forward_width"] == 4 * complete["embedding_dimension"]:
        complete["feed_forward_width"] = None  # GPT-2's own width, however it was written
    if complete["activation"] != "gelu":
        complete["gelu_approximation"] = "tanh"  # not used: one spelling for every other function
    if complete["task"] is None and complete["choice_outputs"]:
        complete["task"] = "multiple_choice"
    if complete["task"] is None:
        complete["task"] = ("language_model" if complete["output_size"] ==
                            complete["padded_vocab_size"] else "text_classification")
    return complete


def feed_forward_width(config: dict) -> int:
    """The feed-forward's hidden width of a complete ``config``."""
    return config["feed_forward_width"] or 4 * config["embedding_dimension"]


def attention_scale(config: dict, layer: int) -> float:
    """What block ``layer`` multiplies its attention scores by."""
    head_width = config["embedding_dimension"] // config["number_of_heads"]
    scale = head_width ** -0.5 if config["attention_scaled_by_head_width"] else 1.0
    return scale / (layer + 1) if config["attention_scaled_by_layer"] else scale


def is_classifier(config: dict) -> bool:
    """Whether a complete ``config``'s head scores anything but the next token."""
    return config["task"] not in ("language_model", "multiple_choice")


def reads_every_position(config: dict) -> bool:
    """Whether a complete ``config``'s scores mean something at every position (a language
    model's, a token classifier's), not only the last token's (a text classifier's)."""
    return config["task"] != "text_classification"


def config_problems(config: dict, *, names: dict[str, str] | None = None) -> list[str]:
    """What cannot work in ``config``, each key under the name ``names`` gives it."""
    names = names or {}
    return [re.sub(r"\{(\w+)\}", lambda key: names.get(key[1], key[1]), problem)
            for problem in _problems(config)]


def config_hint(problems: list[str], *, names: dict[str, str] | None = None) -> str:
    """What to do about ``problems``."""
    if any("does not divide" in problem for problem in problems):
        names = names or {}
        return (f"{names.get('number_of_heads', 'number_of_heads')} must divide "
                f"{names.get('embedding_dimension', 'embedding_dimension')}: GPT-2's sizes are "
                "768/12, 1024/16, 1280/20 and 1600/25")
    return ("fix the values named above" if names else
            "start from gpt2port.GPT_CONFIG_124M and change only the sizes")


def _problems(config: dict) -> list[str]:
    """What cannot work in ``config``, each key written as ``{key}`` (named by the caller)."""
    config, problems = _from_book_keys(config)
    known = set(GPT_CONFIG_124M) | set(OPTIONAL_KEYS)
    problems += [f"unknown key {key!r}" for key in sorted(set(config) - known, key=str)]
    problems += [f"missing key '{{{key}}}'" for key in GPT_CONFIG_124M if key not in config]
    complete = {**OPTIONAL_KEYS, **config}
    for key in _POSITIVE_INTEGERS:
        value = complete.get(key)
        if key in complete and (type(value) is not int or value <= 0):
            problems.append(f"{{{key}}} must be a positive integer, got {value!r}")
        elif key in complete and value > LARGEST_SIZE:
            problems.append(f"{{{key}}}={value} is absurd (at most {LARGEST_SIZE:,})")
    width, heads = complete.get("embedding_dimension"), complete.get("number_of_heads")
    if type(width) is int and type(heads) is int and width > 0 and heads > 0 and width % heads:
        problems.append(f"{{number_of_heads}}={heads} does not divide "
                        f"{{embedding_dimension}}={width}")
    rate = complete.get("dropout_rate")
    if "dropout_rate" in complete and not (
        isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate < 1
    ):
        problems.append(f"{{dropout_rate}} must be a number in [0, 1), got {rate!r}")
    epsilon = complete["layer_norm_epsilon"]
    if not (isinstance(epsilon, float) and epsilon > 0):
        problems.append(f"{{layer_norm_epsilon}} must be a positive float, got {epsilon!r}")
    for key in ("qkv_bias", "tie_output_head", "bias", "output_bias",
                "attention_scaled_by_head_width", "attention_scaled_by_layer"):
        if key in complete and not isinstance(complete[key], bool):
            problems.append(f"{{{key}}} must be True or False, got {complete[key]!r}")
    if complete["gelu_approximation"] not in GELU_APPROXIMATIONS:
        problems.append(f"{{gelu_approximation}} must be one of {GELU_APPROXIMATIONS}, got "
                        f"{complete['gelu_approximation']!r}")
    if complete["activation"] not in ACTIVATIONS:
        problems.append(f"{{activation}} must be one of {ACTIVATIONS}, got "
                        f"{complete['activation']!r}")
    hidden = complete["feed_forward_width"]
    if hidden is not None and not (type(hidden) is int and 0 < hidden <= LARGEST_SIZE):
        problems.append(f"{{feed_forward_width}} must be a positive integer (or None: 4 x the "
                        f"width), got {hidden!r}")
    vocabulary, rows = complete.get("vocab_size"), complete["padded_vocab_size"]
    if rows is not None and not (type(rows) is int and type(vocabulary) is int
                                 and vocabulary <= rows <= LARGEST_SIZE):
        problems.append(f"{{padded_vocab_size}} must be an integer from "
                        f"{{vocab_size}}={vocabulary!r} up, got {rows!r}")
    return problems + _head_problems(complete)


def _head_problems(complete: dict) -> list[str]:
    """What cannot work in the output head's keys (``complete``: defaults filled in)."""
    size, labels = complete["output_size"], complete["output_labels"]
    if size is not None and not (type(size) is int and 0 < size <= LARGEST_SIZE):
        return [f"{{output_size}} must be a positive integer, got {size!r}"]
    rows = complete["padded_vocab_size"] or complete.get("vocab_size")
    problems = []
    if complete.get("tie_output_head") is True and size not in (None, rows):
        problems.append(f"a head of {{output_size}}={size} rows cannot be tied to the token "
                        f"embedding table of {rows!r} rows")
    task, choices = complete["task"], complete["choice_outputs"]
    if not (type(choices) is int and 0 <= choices <= LARGEST_SIZE):
        return [f"{{choice_outputs}} must be a whole number of 0 or more, got {choices!r}"]
    if complete["choice_activation"] not in (None, "tanh"):
        problems.append(f"{{choice_activation}} must be None or 'tanh', got "
                        f"{complete['choice_activation']!r:.60}")
    if task is not None and task not in TASKS:
        problems.append(f"{{task}} must be one of {', '.join(TASKS)}, got {task!r:.60}")
    elif task == "language_model" and size not in (None, rows):
        problems.append(f"a language model's head has a row per token: {{output_size}}={size}, "
                        f"the vocabulary {rows!r}")
    elif task is not None and (task == "multiple_choice") != bool(choices):
        problems.append(f"a multiple-choice head ({{choice_outputs}}="
                        f"{complete['choice_outputs']!r}) is what {{task}} 'multiple_choice' has, "
                        "and only it")
    elif task == "question_answering" and size not in (None, 2):
        problems.append(f"a question-answering head scores start and end: {{output_size}} must "
                        f"be 2, got {size!r}")
    if labels is not None and not (isinstance(labels, list) and len(labels) == (size or rows)
                                   and all(isinstance(label, str) for label in labels)):
        problems.append(f"{{output_labels}} must be a list of {size or rows!r} names, "
                        f"got {labels!r:.60}")
    return problems


def _from_book_keys(config: dict) -> tuple[dict, list[str]]:
    """The book's key names (``emb_dim``...) renamed to ours; using both for one value is a
    problem."""
    renamed, problems = {}, []
    for key, value in config.items():
        ours = BOOK_KEYS.get(key, key)
        if ours in renamed or (ours != key and ours in config):
            problems.append(f"{key!r} and {ours!r} are the same setting; give one")
        renamed[ours] = value
    return renamed, problems




@dataclass(frozen=True)
class Preset:
    """A named GPT-2 release: where it lives on the Hub and the config it has."""

    name: str
    repo_id: str
    revision: str | None  # a commit pins the download; None follows the repo's main branch
    config: dict = field(repr=False)
    pinned: dict = field(default_factory=dict, repr=False)  # file -> (size, sha256)
    known_greedy: tuple | None = field(default=None, repr=False)  # (prompt ids, greedy ids)


def _pretrained(width: int, layers: int, heads: int) -> dict:
    return {
        **GPT_CONFIG_124M,
        "embedding_dimension": width,
        "number_of_layers": layers,
        "number_of_heads": heads,
        "qkv_bias": True,
        "tie_output_head": True,
        "layer_norm_epsilon": 1e-5,
    }


PRESETS = {
    preset.name: preset
    for preset in (
        Preset("gpt2", "openai-community/gpt2", "607a30d783dfa663caf39e06633721c8d4cfcd7e",
               _pretrained(768, 12, 12), pinned={"model.safetensors": (
                   548_105_171,
                   "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707")},
               # "The dog" -> " was found in a field near the town of ..." (20 tokens in all)
               known_greedy=((464, 3290), (464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246,
                                           286, 2688, 290, 2688, 27262, 13, 198, 198, 464, 3290))),
        Preset("gpt2-medium", "openai-community/gpt2-medium", None, _pretrained(1024, 24, 16)),
        Preset("gpt2-large", "openai-community/gpt2-large", None, _pretrained(1280, 36, 20)),
        Preset("gpt2-xl", "openai-community/gpt2-xl", None, _pretrained(1600, 48, 25)),
        Preset("distilgpt2", "distilbert/distilgpt2", None, _pretrained(768, 6, 12)),
    )
}


@dataclass(frozen=True)
class HubSource:
    """Where a preset or repo id lives on the Hub, and what is known about that exact revision."""

    repo_id: str
    revision: str | None
    pinned: dict = field(default_factory=dict)  # file -> (size, sha256)
    known_greedy: tuple | None = None  # (prompt ids, greedy ids)


def hub_source(name: str, revision: str | None = None) -> HubSource:
    """A preset's repo and pinned commit (with its known hashes and answers), or a plain repo id.

    The pinned facts hold only at the pinned commit, so another ``revision`` drops them.
    """
    preset = PRESETS.get(name)
    if preset is None:
        return HubSource(name, revision)
    if revision not in (None, preset.revision):
        return HubSource(preset.repo_id, revision)
    return HubSource(preset.repo_id, preset.revision, preset.pinned, preset.known_greedy)
