"""PEFT's LoRA adapters: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``),
merged onto their base in the model's own names.

A LoRA module adds ``scale * B @ A`` to its base weight, ``B @ A`` being [out, in] as the
module computes it: the model's ``nn.Linear`` layout, whatever the base stores (GPT-2's
``Conv1D`` keeps [in, out], hence peft's ``fan_in_fan_out``). ``scale`` is ``alpha / r``
(``alpha / sqrt(r)`` with ``use_rslora``). An embedding's ``lora_embedding_B @ A`` is [D, V],
transposed to the table's rows. Full tensors in the file (``modules_to_save``, trained biases)
replace the base's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import slots
from ..errors import CheckpointError, ConfigError, MappingError
from ..formats.huggingface import BODY_PREFIX, TABLES
from ..io.pages import MappedFiles
from ..io.readers import read_json, read_weights_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
# peft's task_type -> the model's task (config.TASKS); None keeps the base's
TASK_TYPES = {"CAUSAL_LM": "language_model", "SEQ_CLS": "text_classification",
              "TOKEN_CLS": "token_classification", "QUESTION_ANS": "question_answering"}
# adapter_config.json keys gpt2port computes, or that change nothing once trained
UNDERSTOOD = {
    "peft_type", "task_type", "r", "lora_alpha", "use_rslora", "fan_in_fan_out", "bias",
    "lora_bias", "rank_pattern", "alpha_pattern", "target_modules", "modules_to_save",
    "base_model_name_or_path", "revision", "inference_mode", "init_lora_weights", "lora_dropout",
    "peft_version", "auto_mapping", "layers_to_transform", "layers_pattern", "exclude_modules",
    "megatron_core", "qalora_group_size", "loftq_config", "eva_config", "corda_config",
    "lora_ga_config", "ensure_weight_tying",
}
# keys that make the adapter compute something other than W + scale * B @ A, by what they are
VARIANTS = {"use_dora": "DoRA (weight-decomposed LoRA)", "use_qalora": "QA-LoRA",
            "alora_invocation_tokens": "activated LoRA (aLoRA)",
            "layer_replication": "layer replication", "target_parameters": "LoRA on parameters",
            "trainable_token_indices": "trainable tokens", "megatron_config": "Megatron layers",
            "use_bdlora": "block-diagonal LoRA"}
BASE_HINT = "name the base with --base PATH|REPO (base= in Python)"
PART = re.compile(r"(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                  r"(?:\.(?:default\.)?(?P<kind>weight|bias))?\Z")


def is_adapter(path: Path) -> bool:
    """Whether ``path`` is a PEFT adapter: a folder holding ``adapter_config.json``, or that
    file itself."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() if path.is_dir() else path.name == CONFIG_FILE


@dataclass
class Module:
    """One LoRA module: its name in transformers' GPT-2 (``h.0.attn.c_attn``), A and B, the
    bias B may carry, and its scale."""

    name: str
    down: torch.Tensor  # A: [r, in] (an embedding's: [r, V])
    up: torch.Tensor  # B: [out, r] (an embedding's: [D, r])
    scale: float
    up_bias: torch.Tensor | None = None
    embedding: bool = False

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self) -> torch.Tensor:
        """``scale * B @ A`` in the model's layout ([out, in]; an embedding's [V, D]), fp32."""
        found = self.up.float() @ self.down.float()
        return self.scale * (found.t() if self.embedding else found)


class LoraAdapter:
    """A PEFT LoRA adapter read from its folder: its settings, modules and full tensors."""

    base_path: Path | None = None  # where its base was found, once loaded

    def __init__(self, path: Path):
        self.folder = Path(path) if Path(path).is_dir() else Path(path).parent
        config_path = self.folder / CONFIG_FILE
        self.settings = read_json(config_path)
        if not isinstance(self.settings, dict):
            raise ConfigError(f"{config_path}: the config is not a dict",
                              hint="adapter_config.json is written by peft's save_pretrained")
        self._refuse_variants(config_path)
        self._check_values(config_path)
        weights = next((self.folder / name for name in WEIGHTS_FILES
                        if (self.folder / name).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{self.folder}: {CONFIG_FILE} without its weights (looked for "
                                  f"{', '.join(WEIGHTS_FILES)})",
                                  hint="copy the adapter's weights file beside its config")
        self.origin = str(weights)
        tensors = {_module_name(name): tensor
                   for name, tensor in read_weights_file(weights).items()}
        broken = sorted(name for name, tensor in tensors.items()
                        if tensor.is_floating_point() and not torch.isfinite(tensor).all())
        if broken:
            raise CheckpointError(f"{self.origin}: tensors that are not finite: "
                                  f"{', '.join(broken)}", hint="the adapter is damaged (or was "
                                  "saved after a diverged training step); use another copy")
        self.modules, self.replaced = self._modules(tensors)
        if not self.modules and not self.replaced:
            raise CheckpointError(f"{self.origin}: the adapter holds no tensors",
                                  hint="save the adapter again with peft")
        self.task = self._task(config_path)

    def _refuse_variants(self, config_path: Path) -> None:
        settings = self.settings
        kind = settings.get("peft_type", "LORA")
        if kind != "LORA":
            raise ConfigError(f"{config_path}: a {kind} adapter: gpt2port merges LoRA adapters "
                              "only", hint="merge it with peft (merge_and_unload) and save the "
                              "merged model, then load that")
        for key, what in VARIANTS.items():
            if settings.get(key):
                raise ConfigError(f"{config_path}: {key} is set: {what} is not plain LoRA, and "
                                  "gpt2port merges plain LoRA only",
                                  hint="merge it with peft (merge_and_unload) and save the "
                                  "merged model, then load that")
        unknown = sorted(key for key, value in settings.items()
                         if key not in UNDERSTOOD and key not in VARIANTS
                         and value not in (None, False, {}, [], ""))
        if unknown:
            raise ConfigError(f"{config_path}: sets {', '.join(unknown)}, which gpt2port does "
                              "not compute", hint="merge it with peft (merge_and_unload) and "
                              "save the merged model, then load that")

    def _check_values(self, config_path: Path) -> None:
        """Raise ConfigError for settings of a type or value LoRA cannot have."""
        settings, problems = self.settings, []
        alpha = settings.get("lora_alpha", 8)
        patterns = settings.get("alpha_pattern") or {}
        if type(alpha) not in (int, float) or not math.isfinite(alpha):
            problems.append(f"lora_alpha {alpha!r} is not a number")
        if not isinstance(patterns, dict) or not all(
                isinstance(key, str) and type(value) in (int, float) and math.isfinite(value)
                for key, value in patterns.items()):
            problems.append("alpha_pattern is not a map of module patterns to numbers")
        else:
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error:
                    problems.append(f"alpha_pattern's {pattern!r} is not a pattern")
        if not isinstance(settings.get("base_model_name_or_path") or "", str):
            problems.append("base_model_name_or_path is not a name")
        if problems:
            raise ConfigError(f"{config_path}: " + "; ".join(problems),
                              hint="adapter_config.json is written by peft's save_pretrained")

    def _modules(self, tensors: dict[str, torch.Tensor]
                 ) -> tuple[dict[str, Module], dict[str, torch.Tensor]]:
        """The LoRA modules by name, and the full tensors the adapter replaces."""
        parts, replaced = {}, {}
        for name, tensor in tensors.items():
            found = PART.match(name)
            if found is None:
                replaced[name] = tensor
            else:
                key = found["part"] + (".bias" if found["kind"] == "bias" else "")
                parts.setdefault(found["module"], {})[key] = tensor
        modules, problems = {}, []
        for name, held in sorted(parts.items()):
            embedding = "lora_embedding_A" in held or "lora_embedding_B" in held
            down = held.get("lora_embedding_A" if embedding else "lora_A")
            up = held.get("lora_embedding_B" if embedding else "lora_B")
            if down is None or up is None or down.dim() != 2 or up.dim() != 2:
                problems.append(f"{name}: A and B must both be there, each 2-D")
                continue
            if up.shape[1] != down.shape[0]:
                problems.append(f"{name}: A has rank {down.shape[0]}, B {up.shape[1]}")
                continue
            modules[name] = Module(name, down, up, self._scale(name, down.shape[0]),
                                   held.get("lora_B.bias"), embedding)
        if problems:
            raise MappingError(self.origin, problems, self.settings)
        return modules, replaced

    def _scale(self, module: str, rank: int) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` with rslora), alpha from ``alpha_pattern`` where
        a pattern names the module (peft's rule: the pattern matches the name's end)."""
        alpha = self.settings.get("lora_alpha", 8)
        for pattern, value in (self.settings.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        return alpha / (math.sqrt(rank) if self.settings.get("use_rslora") else rank)

    def _task(self, config_path: Path) -> str | None:
        kind = self.settings.get("task_type")
        if kind is None:
            return None
        if not isinstance(kind, str) or kind not in TASK_TYPES:
            raise ConfigError(f"{config_path}: task_type {kind!r}: not a head GPT-2 has "
                              f"({', '.join(TASK_TYPES)})", hint="train the adapter on one of "
                              "transformers' GPT-2 classes")
        return TASK_TYPES[kind]

    @property
    def base_name(self) -> str | None:
        return self.settings.get("base_model_name_or_path") or None

    def describe(self) -> list[str]:
        """What the adapter changes, one line each: for ``inspect``."""
        ranks = sorted({module.rank for module in self.modules.values()})
        alpha = self.settings.get("lora_alpha", 8)
        rslora = " (rslora: alpha / sqrt(r))" if self.settings.get("use_rslora") else ""
        head = (f"LoRA adapter {self.origin}: {len(self.modules)} module(s), rank "
                f"{'/'.join(map(str, ranks)) or '-'}, alpha {alpha}{rslora}, base "
                f"{self.base_name or '(not named)'}")
        lines = [head]
        lines += [f"  {module.name}: rank {module.rank}, scale {module.scale:.4g}"
                  f"{', B bias' if module.up_bias is not None else ''}"
                  for module in self.modules.values()]
        lines += [f"  {name}: replaced ({'x'.join(map(str, tensor.shape))})"
                  for name, tensor in self.replaced.items()]
        return lines

    def merge_statement(self) -> str:
        """What a conversion of the adapter writes, in one line."""
        ranks = "/".join(map(str, sorted({module.rank for module in self.modules.values()})))
        replaced = f" and {len(self.replaced)} tensor(s) it replaces" if self.replaced else ""
        return (f"the LoRA adapter {self.folder} is merged onto its base "
                f"{self.base_path or self.base_name}: {len(self.modules)} module(s) "
                f"of rank {ranks or '-'} added as W + scale * B @ A{replaced}; the output is the "
                "merged model, not an adapter")

    def merged_config(self, base: dict, origin: str) -> dict:
        """The model config once merged onto a base of config ``base``: a head the adapter
        brings (``modules_to_save``) sets the task and output size; a tied head that changes
        is untied.

        Raises:
            ConfigError: for a classifier adapter that lacks its head on a language-model base.
        """
        config = dict(base)
        task = self.task or base["task"]
        table = TABLES.get(task)
        head = table.source_name("output_head.weight") if table else None
        if head in self.replaced:
            weight = self.replaced[head]
            config.update(task=task, output_size=weight.shape[0] if weight.dim() == 2 else -1,
                          output_bias=f"{head.removesuffix('.weight')}.bias" in self.replaced,
                          output_labels=None, tie_output_head=False)
        elif task != base["task"] and task != "language_model":
            raise ConfigError(f"{origin}: a {self.settings['task_type']} adapter without its "
                              f"head ({head}), on a base that has none",
                              hint="save the adapter with modules_to_save naming the head")
        touched = self.touched(config)
        if base["tie_output_head"] and {"output_head.weight",
                                        "token_embedding_table.weight"} & set(touched):
            config["tie_output_head"] = False
        return config

    def touched(self, config: dict) -> dict[str, tuple[str, ...]]:
        """Each model tensor the adapter changes -> the adapter's names that change it."""
        found = {}
        names = [*self.replaced, *(f"{name}.{kind}" for name, module in self.modules.items()
                                   for kind in ("weight", "bias")[:1 + (module.up_bias is not None)])]
        for name in names:
            for target in _targets(name, config)[0]:
                found[target] = (*found.get(target, ()), name)
        return found

    def merged(self, state: dict[str, torch.Tensor], base: dict, config: dict,
               dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The base's model tensors ``state`` (of config ``base``) with the adapter merged, for
        a model of ``config`` (``merged_config``); each changed tensor in ``dtype``.

        Raises:
            MappingError: listing every adapter tensor that does not fit the base.
        """
        state = dict(state)
        if base["tie_output_head"] and not config["tie_output_head"]:
            state["output_head.weight"] = state["token_embedding_table.weight"]
        expected = slots.expected_tensors(config)
        deltas, problems = {}, []
        for name, tensor in self.replaced.items():  # first: a delta adds to what replaces
            targets, how = _targets(name, config)
            if not targets:
                problems.append(f"{name!r}: not a tensor of GPT-2's {config['task']} model")
                continue
            for target, part in zip(targets, how.to_model([tensor]), strict=True):
                if target not in expected or tuple(part.shape) != expected[target]:
                    problems.append(f"{name!r}: shape {list(tensor.shape)} does not fit "
                                    f"{target} {list(expected.get(target, ()))}")
                state[target] = part
        for name, module in self.modules.items():
            _add(deltas, problems, name, _targets(f"{name}.weight", config)[0],
                 module.delta(), expected)
            if module.up_bias is not None:
                _add(deltas, problems, f"{name} (B's bias)", _targets(f"{name}.bias", config)[0],
                     module.scale * module.up_bias.float(), expected)
        if problems:
            raise MappingError(self.origin, problems, config)
        mapped = MappedFiles.now()
        for target in self.touched(config):
            before = state[target]
            state[target] = (before.float() + deltas.get(target, 0)).to(dtype)
            mapped.release(before)  # the base's pages: not needed again
        return state


def _add(deltas: dict, problems: list, name: str, targets: tuple[str, ...],
         delta: torch.Tensor, expected: dict) -> None:
    """Add ``delta`` (the module's [out, in], or [out]) to ``deltas``, split over
    ``targets``."""
    if not targets:
        problems.append(f"{name!r}: not a module of GPT-2 gpt2port knows")
        return
    wanted = [expected.get(target) for target in targets]
    rows = sum(shape[0] for shape in wanted if shape)
    if None in wanted or delta.shape[0] != rows or tuple(delta.shape[1:]) != wanted[0][1:]:
        shape = [rows, *wanted[0][1:]] if None not in wanted else "(absent in the base)"
        problems.append(f"{name!r}: changes a tensor of shape {list(delta.shape)}, and the "
                        f"base's is {shape}")
        return
    for target, part in zip(targets, delta.split([shape[0] for shape in wanted]), strict=True):
        deltas[target] = deltas.get(target, 0) + part


def _module_name(name: str) -> str:
    """An adapter tensor's name as transformers' GPT-2 names it, without peft's and the
    body's prefixes (a targeted layer's own weight, saved with an embedding, is its
    ``base_layer``)."""
    return name.removeprefix(PEFT_PREFIX).removeprefix(BODY_PREFIX).replace(".base_layer.", ".")


def _targets(name: str, config: dict):
    """The model tensors transformers' GPT-2 tensor ``name`` fills in a model of ``config``,
    and the transform from theirs (empty: none)."""
    for rule in TABLES[config["task"]].expand(config["number_of_layers"]):
        if rule.source == (name,):
            return rule.target, rule.transform
    return (), None
