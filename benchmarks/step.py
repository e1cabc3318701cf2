"""Where one batch-1 decoding step's time goes on this CPU, per dtype: the whole step, its
matrix-vector products as they run inside it, the same products back to back, and the rest of
the step (norms, attention, cache writes, Python) with the products' memory traffic taken away.

    python benchmarks/step.py            # ~1 min on 2 cores; 124M shape, random weights
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from checkpoint import write_full_size_folder

from gpt2port import kernels, load_pretrained
from gpt2port import model as model_module
from gpt2port.model import GPTModel, KVCache

STEPS, ROUNDS = 30, 5


def products_of(model: GPTModel) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The (weight, bias) of every product a decoding step runs, in order."""
    products = []
    for block in model.transformer_blocks:
        attention, feed_forward = block.attention, block.feed_forward
        packed = attention.packed_projection()
        products += [packed] if packed else [(getattr(attention, name).weight,
                                              getattr(attention, name).bias)
                                             for name in attention.PROJECTIONS]
        products += [(layer.weight, layer.bias) for layer in
                     (attention.output_projection, feed_forward.expansion, feed_forward.contraction)]
    return [*products, (model.output_head.weight, None)]


@contextmanager
def linear_replaced(replacement: Callable) -> Iterator[Callable]:
    """``model.linear`` replaced inside; yields the real one."""
    real = model_module.linear
    model_module.linear = replacement
    try:
        yield real
    finally:
        model_module.linear = real


def one_round(model: GPTModel, before_timing: Callable[[], None] = lambda: None) -> float:
    """The mean time of one decoding step over STEPS steps, in ms."""
    cache = KVCache(model, 1, 8 + STEPS)
    model(torch.tensor([[464, 3290]]), cache=cache, last_only=True)
    token = torch.tensor([[11]])
    with kernels.decoding(model.token_embedding_table.weight, 1):
        model(token, cache=cache, last_only=True)
        before_timing()
        start = time.perf_counter()
        for _ in range(STEPS):
            model(token, cache=cache, last_only=True)
        return (time.perf_counter() - start) / STEPS * 1e3


def measure(folder: Path, dtype: str) -> dict[str, float]:
    model = load_pretrained(folder, dtype=dtype)
    results = {}
    with torch.inference_mode():
        spent = [0.0]

        def timed(x, weight, bias):
            start = time.perf_counter()
            result = real(x, weight, bias)
            spent[0] += time.perf_counter() - start
            return result
        with linear_replaced(timed) as real:  # the round with the fastest step, and its products
            step, products = min((one_round(model, lambda: spent.__setitem__(0, 0.0)),
                                  spent[0] / STEPS * 1e3) for _ in range(ROUNDS))
        results["step"] = step
        results["products in the step"] = products

        inputs = {width: torch.randn(1, 1, width, dtype=model.output_head.weight.dtype)
                  for width in {weight.shape[1] for weight, _ in products_of(model)}}
        calls = [(inputs[weight.shape[1]], weight, bias) for weight, bias in products_of(model)]
        with kernels.decoding(model.token_embedding_table.weight, 1):
            best = float("inf")
            for _ in range(ROUNDS * 4):
                start = time.perf_counter()
                for call in calls:
                    model_module.linear(*call)
                best = min(best, time.perf_counter() - start)
        results["same products back to back"] = best * 1e3

        outputs = {}

        def no_product(x, weight, bias):  # a preallocated result: the rest of the step, alone
            key = (*x.shape[:-1], weight.shape[0])
            return outputs.setdefault(key, torch.zeros(key, dtype=x.dtype))
        with linear_replaced(no_product):
            results["the rest, without the products' traffic"] = min(
                one_round(model) for _ in range(ROUNDS))
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
