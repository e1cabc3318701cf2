"""A child process for tests/test_api.py: reads one call per line (a Python expression over the
names below), runs it, answers one JSON line: the result's summary, gpt2port's own error, or
any other exception (a bug). A signal ends the process, and the parent sees it.

Where a call asks for ``compile=True`` on an fp32 model with greedy decoding, the same call on
the regular path runs too and the answer says whether the two agree.
"""

import json
import sys
from pathlib import Path

import torch

import gpt2port
from gpt2port import (
    GPTModel,
    compare,
    convert,
    generate,
    inspect,
    load_pretrained,
    load_tokenizer,
    stream,
    verify,
)

CONFIG = {"vocab_size": 1000, "context_length": 16, "embedding_dimension": 32,
          "number_of_heads": 4, "number_of_layers": 2, "dropout_rate": 0.0, "qkv_bias": True}


def random_model(dtype):
    torch.manual_seed(0)
    model = GPTModel(CONFIG).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # every tensor random, norm gains too
            parameter.normal_(0, 0.3)
    return model.to(dtype)


MODELS = {name: random_model(dtype) for name, dtype in
          (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16))}
FOLDER = Path(sys.argv[1])  # a checkpoint folder the calls may name
OUTPUTS = Path(sys.argv[2])  # where conversions may write
NAMES = {"torch": torch, "models": MODELS, "folder": FOLDER, "outputs": OUTPUTS,
         "generate": generate, "stream": stream, "load_pretrained": load_pretrained,
         "load_tokenizer": load_tokenizer, "compare": compare, "convert": convert,
         "verify": verify, "inspect": inspect}


def summary(result):
    if isinstance(result, torch.Tensor):
        return {"tensor": result.tolist()}
    if isinstance(result, list) and all(isinstance(row, torch.Tensor) for row in result):
        return {"columns": [row.tolist() for row in result]}
    if isinstance(result, GPTModel):
        return {"model": str(next(result.parameters()).dtype)}
    if isinstance(result, (list, str, int, float)) or result is None:
        return {"value": result if not isinstance(result, str) else result[:200]}
    return {"type": type(result).__name__}


def run(expression):
    try:
        return summary(eval(expression, NAMES))
    except gpt2port.Gpt2portError as error:
        return {"error": type(error).__name__, "message": error.message, "hint": error.hint}
    except Exception as error:  # noqa: BLE001 - the answer the test refuses
        return {"bug": f"{type(error).__name__}: {error}"}


for line in sys.stdin:
    call = json.loads(line)
    answer = run(call["expression"])
    if call.get("regular"):
        answer["regular"] = run(call["regular"])
    print(json.dumps(answer), flush=True)
