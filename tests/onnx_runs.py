"""An ONNX export run as its consumers run it: onnxruntime with past key values (optimum's
``ORTModelForCausalLM`` loop: the prompt with an empty past, then one token at a time with the
mask and positions grown), optimum itself and transformers.js in Node where they are installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# a Python with optimum-onnx (its transformers < 4.58 cannot share the test venv), and a folder
# whose node_modules hold @huggingface/transformers: .ci/run and the quickstart make both
OPTIMUM_PYTHON = Path(os.environ.get("GPT2PORT_OPTIMUM_PYTHON", ROOT / ".venv-optimum/bin/python"))
TRANSFORMERS_JS = Path(os.environ.get("GPT2PORT_TRANSFORMERS_JS", ROOT / ".references/node"))
# each is there only when its install finished (a venv without optimum in it is not)
HAS_OPTIMUM = OPTIMUM_PYTHON.is_file() and any(
    OPTIMUM_PYTHON.parent.parent.glob("lib/python*/site-packages/optimum/onnxruntime"))
HAS_TRANSFORMERS_JS = shutil.which("node") is not None and (
    TRANSFORMERS_JS / "node_modules" / "@huggingface" / "transformers" / "package.json").is_file()


def onnx_file(folder: Path) -> Path:
    return next((folder / "onnx").glob("model*.onnx"))


def greedy_with_past(folder: Path, prompt: list[int], new: int) -> tuple[list[int], list]:
    """Greedy ids and each step's last logits, by onnxruntime with the cache carried over."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file(folder)),
                                           providers=["CPUExecutionProvider"])
    past = {each.name: np.zeros((1, each.shape[1], 0, each.shape[3]),
                                dtype=np.float16 if "float16" in each.type else np.float32)
            for each in session.get_inputs() if each.name.startswith("past_key_values.")}
    ids, feed, steps = list(prompt), list(prompt), []
    for _ in range(new):
        start = len(ids) - len(feed)
        outputs = session.run(None, {
            "input_ids": np.array([feed], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "position_ids": np.arange(start, len(ids), dtype=np.int64)[None], **past})
        named = dict(zip([each.name for each in session.get_outputs()], outputs, strict=True))
        steps.append(named["logits"][0, -1].astype(np.float32))
        past = {name.replace("present.", "past_key_values."): value
                for name, value in named.items() if name.startswith("present.")}
        ids.append(int(steps[-1].argmax()))
        feed = ids[-1:]
    return ids, steps


OPTIMUM = r"""
import json, sys, torch
from optimum.onnxruntime import ORTModelForCausalLM
folder, prompt, new, file_name = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = ORTModelForCausalLM.from_pretrained(folder, subfolder="onnx", file_name=file_name)
ids = torch.tensor([prompt])
out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                     do_sample=False, pad_token_id=0)
print(json.dumps(out[0].tolist()))
"""


def optimum_greedy(folder: Path, prompt: list[int], new: int) -> list[int]:
    """``ORTModelForCausalLM.generate``'s greedy ids, in the optimum Python."""
    done = subprocess.run([str(OPTIMUM_PYTHON), "-c", OPTIMUM, str(folder), json.dumps(prompt),
                           str(new), onnx_file(folder).name], capture_output=True, text=True,
                          check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


TRANSFORMERS_JS_SCRIPT = r"""
const [folder, prompt, fileDtype] = process.argv.slice(2);
const { pipeline, env } = await import("@huggingface/transformers");
env.allowRemoteModels = false;
env.localModelPath = "";
const generator = await pipeline("text-generation", folder, { dtype: fileDtype });
const out = await generator(prompt, { max_new_tokens: 8, do_sample: false });
console.log(JSON.stringify(out[0].generated_text));
"""


def transformers_js_text(folder: Path, prompt: str, dtype: str) -> str:
    """transformers.js' greedy continuation of ``prompt`` (Node, its CPU runtime)."""
    script = TRANSFORMERS_JS / "run.mjs"
    script.write_text(TRANSFORMERS_JS_SCRIPT)
    done = subprocess.run([shutil.which("node") or "node", str(script), str(folder.resolve()),
                           prompt, dtype], capture_output=True, text=True, check=False,
                          timeout=600, cwd=TRANSFORMERS_JS)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
