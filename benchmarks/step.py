"""Where one batch-1 decoding step's time goes on this CPU, per dtype: the whole step, its
matrix-vector products as they run inside it, the same products back to back, and the rest of
the step (norms, attention, cache writes, Python) with the products' memory traffic taken away.

    python benchmarks/step.py            # ~1 min on 2 cores; 124M shape, random weights
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from checkpoint import write_full_size_folder

from gpt2port import load_pretrained
from gpt2port.engine import kernels
from gpt2port.engine.decoding import Decoder, packed_projection
from gpt2port.model import GPTModel

STEPS, ROUNDS = 30, 5


def products_of(model: GPTModel) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The (weight, bias) of every product a decoding step runs, in order."""
    products = []
    for block in model.transformer_blocks:
        attention, feed_forward = block.attention, block.feed_forward
        packed = packed_projection(attention)
        products += [packed] if packed else [
            (layer.weight, layer.bias) for layer in
            (attention.query_projection, attention.key_projection, attention.value_projection)]
        products += [(layer.weight, layer.bias) for layer in
                     (attention.output_projection, feed_forward.expansion, feed_forward.contraction)]
    return [*products, (model.output_head.weight, None)]


def one_round(model: GPTModel, wrap: Callable[[Callable], Callable] = lambda product: product,
              before_timing: Callable[[], None] = lambda: None) -> float:
    """The mean time of one decoding step over STEPS steps, in ms; ``wrap`` replaces this
    decoder's step product (nothing else sees it)."""
    decoder = Decoder(model, 1, 8 + STEPS)
    decoder.forward(torch.tensor([[464, 3290]]), last_only=True)
    decoder.step = replace(decoder.step, product=wrap(decoder.step.product))
    token = torch.tensor([[11]])
    decoder.forward(token, last_only=True)
    before_timing()
    start = time.perf_counter()
    for _ in range(STEPS):
        decoder.forward(token, last_only=True)
    return (time.perf_counter() - start) / STEPS * 1e3  # the step's thread setting inside


def measure(folder: Path, dtype: str) -> dict[str, float]:
    model = load_pretrained(folder, dtype=dtype)
    results = {}
    with torch.inference_mode():
        spent = [0.0]

        def timing(real):
            def timed(x, weight, bias):
                start = time.perf_counter()
                result = real(x, weight, bias)
                spent[0] += time.perf_counter() - start
                return result
            return timed
        # the round with the fastest step, and its products
        step, products = min((one_round(model, timing, lambda: spent.__setitem__(0, 0.0)),
                              spent[0] / STEPS * 1e3) for _ in range(ROUNDS))
        results["step"] = step
        results["products in the step"] = products

        inputs = {width: torch.randn(1, 1, width, dtype=model.output_head.weight.dtype)
                  for width in {weight.shape[1] for weight, _ in products_of(model)}}
        calls = [(inputs[weight.shape[1]], weight, bias) for weight, bias in products_of(model)]
        step = kernels.for_decoding(model.token_embedding_table.weight, 1)
        best = float("inf")
        with step.running():
            for _ in range(ROUNDS * 4):
                start = time.perf_counter()
                for call in calls:
                    step.product(*call)
                best = min(best, time.perf_counter() - start)
        results["same products back to back"] = best * 1e3

        outputs = {}

        def no_product(real):  # a preallocated result: the rest of the step, alone
            def preallocated(x, weight, bias):
                key = (*x.shape[:-1], weight.shape[0])
                return outputs.setdefault(key, torch.zeros(key, dtype=x.dtype))
            return preallocated
        results["the rest, without the products' traffic"] = min(
            one_round(model, no_product) for _ in range(ROUNDS))
    results["the rest, inside the step"] = results["step"] - results["products in the step"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", action="append", choices=("float32", "float16", "bfloat16"))
    dtypes = parser.parse_args().dtype or ["float32", "float16", "bfloat16"]
    with tempfile.TemporaryDirectory() as work:
        folder = write_full_size_folder(Path(work) / "gpt2-124m")
        rows = {dtype: measure(folder, dtype) for dtype in dtypes}
    print("| ms per decoding step | " + " | ".join(dtypes) + " |")
    print("|---|" + "---|" * len(dtypes))
    for key in rows[dtypes[0]]:
        print(f"| {key} | " + " | ".join(f"{rows[d][key]:.2f}" for d in dtypes) + " |")


if __name__ == "__main__":
    main()
