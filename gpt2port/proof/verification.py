"""Proof that a loaded model computes what the checkpoint means: our logits against a reference."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TASKS, hub_source, is_classifier, reads_every_position
from ..console.progress import progress, stage
from ..engine.generation import generate
from ..errors import ConfigError, VerificationError
from ..formats import Format, recognise
from ..formats.huggingface import CLASSES
from ..io.arrays import Arrays
from ..io.pages import MappedFiles, released_as_used
from ..loading import checkpoint_tokenizer, model_from_checkpoint, open_checkpoint, resolve
from ..model import GPTModel
from ..text.encoders import Tokenizer
from .figures import (
    RELATIVE_TOLERANCE,
    LogitFigures,
    checked_text,
    described_prompt,
    logit_figures,
    text_ids,
)
from .lora_reference import with_adapter
from .reference import choice_scores, forward, head_logits, hidden_states


@dataclass
class Verification:
    """The figures of one check; ``passed`` when all of them hold."""

    reference: str
    max_abs_diff: float
    tolerance: float
    argmax_agreement: float
    greedy_expected: list[int] | None = None
    greedy_found: list[int] | None = None
    over_text: LogitFigures | None = None  # over a text (verify --text)
    prompt: str = ""  # what the logits were compared on, in words
    choice_diff: float | None = None  # a multiple-choice head's largest score difference

    @property
    def passed(self) -> bool:
        return (self.max_abs_diff <= self.tolerance and self.argmax_agreement == 1.0
                and (self.choice_diff is None or self.choice_diff <= self.tolerance)
                and self.greedy_found == self.greedy_expected
                and (self.over_text is None or self.over_text.within))

    def report(self) -> str:
        verdict = (lambda ok: "OK" if ok else "NOT OK")
        lines = [
            f"reference: {self.reference}",
            *([f"prompt: {self.prompt}"] if self.prompt else []),
            (f"max abs diff of logits: {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}) "
             f"{verdict(self.max_abs_diff <= self.tolerance)}"),
            (f"argmax agreement: {self.argmax_agreement:.0%} "
             f"{verdict(self.argmax_agreement == 1.0)}"),
        ]
        if self.choice_diff is not None:
            lines.append(f"max abs diff of the multiple-choice score: {self.choice_diff:.3g} "
                         f"{verdict(self.choice_diff <= self.tolerance)}")
        if self.greedy_expected is not None:
            lines.append(f"known greedy answer ({len(self.greedy_expected)} tokens): "
                         f"{verdict(self.greedy_found == self.greedy_expected)}")
            if self.greedy_found != self.greedy_expected:
                lines.append(f"  expected {self.greedy_expected}\n  found    {self.greedy_found}")
        if self.over_text is not None:
            lines.append(f"{self.over_text.report('ours', 'reference')} "
                         f"{verdict(self.over_text.within)}")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


# transformers' forward pass in a child process: its logs and progress bars are that process's,
# so nothing of this process's (another thread's transformers, say) is silenced or changed.
TRANSFORMERS_REFERENCE = r"""
import json, sys
import numpy, torch
import transformers
folder, ids = sys.argv[1], [int(i) for i in sys.argv[2].split(",")]
output, kind, adapter, options = sys.argv[3:]
model = getattr(transformers, kind).from_pretrained(folder, dtype=torch.float32, **json.loads(
    options))
if adapter:  # peft's own forward: the adapter on the base, not merged
    import peft
    model = peft.PeftModel.from_pretrained(model, adapter)
model = model.eval()
with torch.inference_mode():
    found = model(torch.tensor([ids]))
    if hasattr(found, "mc_logits"):  # the double-heads model's choice score, after the logits
        numpy.save(output + ".choice.npy", found.mc_logits.reshape(-1).numpy())
    # a question-answering model's start and end scores, as the one head computes them
    scores = (found.logits if hasattr(found, "logits") else
              torch.stack([found.start_logits, found.end_logits], dim=-1))
    numpy.save(output, scores[0].numpy())
"""
LM_HEAD = CLASSES["language_model"]
REFERENCES = ("auto", "transformers", "numpy", "onnxruntime")


def transformers_logits(folder: Path, ids: list[int], *, kind: str = LM_HEAD,
                        choice: list | None = None, adapter: Path | None = None,
                        labels: int | None = None) -> np.ndarray:
    """transformers' logits for ``ids`` from its class ``kind``, computed in a child process of
    its own: [T, V] for a language model, [C] (the last token's) for a text classifier,
    [T, C] for a token classifier or question answering; ``choice`` (a list) gets a
    double-heads model's multiple-choice scores. ``adapter``: a PEFT adapter folder that peft
    puts on the model (``labels`` classes in the head it brings).

    Raises:
        VerificationError: when transformers cannot read the folder.
    """
    with tempfile.TemporaryDirectory() as work:
        output = Path(work) / "logits.npy"
        done = subprocess.run([sys.executable, "-c", TRANSFORMERS_REFERENCE, str(folder),
                               ",".join(map(str, ids)), str(output), kind, str(adapter or ""),
                               json.dumps({"num_labels": labels} if labels else {})],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0 or not output.is_file():
            said = (done.stderr.strip().splitlines() or ["it printed nothing"])[-1]
            raise VerificationError(f"{folder}: transformers could not run the reference "
                                    f"({said})", hint="check the transformers install, or use "
                                    "--reference numpy")
        if choice is not None and Path(f"{output}.choice.npy").is_file():
            choice.append(np.load(f"{output}.choice.npy"))
        return np.load(output)


def choose_reference(reference: str, path: Path, source_format: Format, *,
                     adapter: bool = False) -> str:
    """``auto`` is transformers for a Hugging Face folder when transformers is installed (and
    peft, for an adapter on it), else the NumPy reference on the checkpoint's own tensors (any
    format).

    Raises:
        ConfigError: when transformers is asked for on a checkpoint it cannot read, or on an
            adapter without peft.
    """
    runtime = source_format.runtime
    if reference == "onnxruntime" and runtime != "onnxruntime":
        raise ConfigError(f"{path}: onnxruntime runs ONNX exports only",
                          hint="use --reference numpy (or auto) for this checkpoint")
    if runtime is not None and reference in ("auto", runtime):
        if importlib.util.find_spec(runtime) is not None:
            return runtime
        if reference == runtime:
            raise ConfigError(f"{path}: the {runtime} reference needs the {runtime} package",
                              hint=f"pip install {runtime}, or use --reference numpy")
    readable = source_format.transformers_reads(Path(path))
    if reference == "transformers" and not readable:
        raise ConfigError(f"{path}: transformers reads Hugging Face folders of PyTorch weights "
                          "only",
                          hint="use --reference numpy (or auto) for this checkpoint")
    needed = ("transformers", "peft") if adapter else ("transformers",)
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if reference == "transformers" and missing:
        raise ConfigError(f"{path}: the transformers reference needs {' and '.join(missing)}",
                          hint=f"pip install {' '.join(missing)}, or use --reference numpy")
    if reference != "auto":
        return reference
    return "transformers" if readable and not missing else "numpy"


def verify(name_or_path: str | Path, *, revision: str | None = None,
           filename: str | None = None, cache_dir: str | Path | None = None,
           offline: bool = False, reference: str = "auto", text: str | None = None,
           tokenizer: str | Path | Tokenizer | None = None,
           base: str | Path | None = None) -> Verification:
    """What ``gpt2port verify`` does: load a preset, Hub repo id, folder or file in fp32 and
    compare its logits with a reference reading of the same files (a preset's known greedy
    answer too); ``result.passed`` says whether all of it held, ``result.report()`` prints it.
    A LoRA adapter is merged onto its base (``base``, where not the one it names) and checked
    against peft's own forward of the adapter on the base where peft can run it, else against
    the NumPy reference applying the adapter itself.

    Raises:
        ConfigError: for an unknown reference, one that cannot read the checkpoint, or an
            empty ``text``.
        CheckpointError: for files that are missing, malformed or do not fit the model.
        DownloadError: when the Hub cannot be reached or refuses.
        VerificationError: when transformers cannot run its reference.
    """
    folder = resolve(name_or_path, revision=revision, cache_dir=cache_dir, offline=offline,
                     filename=filename)
    checked_text(text)
    checkpoint = open_checkpoint(folder, base=base, cache_dir=cache_dir, offline=offline)
    model = model_from_checkpoint(checkpoint, dtype=torch.float32)
    known = hub_source(str(name_or_path), revision).known_greedy if filename is None else None
    found = checkpoint_tokenizer(checkpoint, tokenizer=tokenizer, cache_dir=cache_dir,
                                 offline=offline)
    return verify_model(model, folder, reference=reference, known_greedy=known, text=text,
                        tokenizer=found, adapter=checkpoint.adapter)


def verify_model(model: GPTModel, folder: Path, *, reference: str = "auto",
                 known_greedy: tuple | None = None, text: str | None = None,
                 tokenizer: Tokenizer | None = None, adapter=None) -> Verification:
    """Compare ``model`` (loaded from ``folder``) with a reference reading of the same files,
    on the fixed prompt as ``tokenizer`` (the model's) encodes it (``figures.prompt_for``);
    ``adapter``: the LoRA adapter (``adapters.lora.LoraAdapter``) merged into ``model``, which
    the reference applies to its base itself.

    ``known_greedy`` = (prompt ids, expected ids) adds a greedy-decoding check; ``text`` adds
    the logit figures over that text (``figures.LogitFigures``), in windows of the context.

    Raises:
        ConfigError: for ``text`` with a classifier (its scores are not next-token logits), an
            empty ``text``, or an unknown reference.
        VerificationError: when transformers cannot run its reference.
    """
    if reference not in REFERENCES:
        raise ConfigError(f"reference {reference!r}: not one gpt2port knows",
                          hint=f"use one of {', '.join(REFERENCES)}")
    if text is not None and is_classifier(model.config):
        raise ConfigError(f"{folder}: --text compares next-token logits, and this model is "
                          f"{TASKS[model.config['task']]}", hint="verify it without --text")
    scored = text_ids(text, tokenizer, model.config, str(folder)) if text is not None else None
    source = Reference(Path(folder), adapter, model.config)
    reference = choose_reference(reference, source.folder, source.format,
                                 adapter=adapter is not None)
    ids, prompt_words = described_prompt(model.config, tokenizer)
    device = next(model.parameters()).device
    # one model in memory at a time: ours runs first, handing its file's pages back as it goes
    # (a memory-mapped model reads them again when next used), then the reference
    with progress("verify", 3 if known_greedy is not None else 2) as bar:
        stage(bar, "our logits")
        kind = CLASSES[model.config["task"]]
        with torch.inference_mode(), released_as_used(model):
            hidden = model.hidden_states(torch.tensor([ids], device=device))
            ours = model.output_head(hidden)[0].float().cpu().numpy()
            ours_choice = (model.choices_from(hidden)[0].float().cpu().numpy()
                           if model.config["choice_outputs"] else None)
        bar.update()
        if known_greedy is not None:
            stage(bar, "greedy answer")
            prompt, answer = known_greedy
            found = generate(model, torch.tensor([list(prompt)], device=device),
                             len(answer) - len(prompt))[0].tolist()
            MappedFiles.now().release(*model.parameters())
            bar.update()
        stage(bar, f"{reference} reference")
        choice, relative = [], RELATIVE_TOLERANCE
        if reference == "transformers":
            expected = transformers_logits(source.folder, ids, kind=kind, choice=choice,
                                           **source.peft_options())
        elif reference == "onnxruntime":
            expected = source.format.runtime_logits(source.folder, ids)
            relative = source.format.runtime_tolerance(source.folder) or relative
        else:
            arrays, config = source.arrays()
            reference_hidden = hidden_states(arrays, config, ids)  # [T, D], once for both heads
            expected = head_logits(arrays, reference_hidden)
            if model.config["choice_outputs"]:
                choice.append(choice_scores(arrays, config, reference_hidden))
        if not reads_every_position(model.config):  # the last token's scores classify
            ours, expected = ours[-1:], expected.reshape(-1, ours.shape[-1])[-1:]
        bar.update()
    name = (f"transformers {kind}" if reference == "transformers"
            else "onnxruntime running the export's own graph" if reference == "onnxruntime"
            else f"gpt2port.proof.reference (NumPy, the checkpoint's own tensors, read by "
                 f"{source.format.reference_reads_with})")
    if adapter is not None:
        name += (" with peft's LoRA forward" if reference == "transformers"
                 else ", the LoRA adapter applied by gpt2port.proof.lora_reference")
    result = Verification(
        reference=name,
        max_abs_diff=float(np.abs(ours - expected).max()),
        tolerance=relative * max(1.0, float(np.abs(expected).max())),
        argmax_agreement=float((ours.argmax(-1) == expected.argmax(-1)).mean()),
        prompt=prompt_words,
    )
    if ours_choice is not None:
        result.choice_diff = float(np.abs(ours_choice - choice[0]).max())
    if known_greedy is not None:
        result.greedy_expected, result.greedy_found = list(known_greedy[1]), found
    if scored is not None:
        result.over_text = _over_text(model, reference, source, scored)
    return result


class Reference:
    """What the reference reads: the checkpoint's folder and format, or a LoRA adapter's base
    with the adapter applied (``config``: the merged model's)."""

    def __init__(self, folder: Path, adapter, config: dict):
        self.adapter, self.config = adapter, config
        self.folder = adapter.base_path if adapter is not None else folder
        self.format = recognise(self.folder)

    def peft_options(self) -> dict:
        """transformers_logits' options for peft's forward of the adapter."""
        if self.adapter is None:
            return {}
        labels = self.config["output_size"] if self.config["task"] in (
            "text_classification", "token_classification") else None
        return {"adapter": self.adapter.folder, "labels": labels}

    def arrays(self) -> tuple[Arrays, dict]:
        """The NumPy reference's arrays and config."""
        arrays, config = self.format.reference_tensors(self.folder)
        if self.adapter is None:
            return arrays, config
        config = {**config, **{key: self.config[key] for key in (
            "task", "output_size", "output_bias", "tie_output_head", "output_labels")}}
        return with_adapter(arrays, config, self.adapter.folder), config


def _over_text(model: GPTModel, reference: str, source: Reference, ids: list[int]):
    """Our logits against the reference's over a text's ``ids``, window by window."""
    config, relative = model.config, RELATIVE_TOLERANCE
    device = next(model.parameters()).device

    def ours(window: list[int]) -> torch.Tensor:
        with torch.inference_mode(), released_as_used(model):
            return model(torch.tensor([window], device=device))[0].float().cpu()

    if reference == "transformers":
        def theirs(window: list[int]) -> np.ndarray:
            return transformers_logits(source.folder, window, **source.peft_options())
    elif reference == "onnxruntime":
        relative = source.format.runtime_tolerance(source.folder) or relative

        def theirs(window: list[int]) -> np.ndarray:
            return source.format.runtime_logits(source.folder, window)
    else:
        arrays, reference_config = source.arrays()

        def theirs(window: list[int]) -> np.ndarray:
            return forward(arrays, reference_config, window)

    return logit_figures(ours, theirs, ids, config["context_length"], config["vocab_size"],
                         relative=relative)
