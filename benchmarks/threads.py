"""Tokens per second of threads generating at once: 1, 2, 4 and 8 threads sharing one model,
and one model per thread, in the same run (alternating rounds, best of each); and whether the
calling threads' OpenMP setting is as it was.

    python benchmarks/threads.py [--dtype D]   # ~3 min on 2 cores; 124M shape, random weights
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from checkpoint import write_full_size_folder

from gpt2port import generate, load_pretrained

TOKENS, ROUNDS = 24, 3


def tokens_per_second(models: list, threads: int) -> float:
    """All ``threads`` generating TOKENS tokens at once (thread i uses models[i % len]); the
    tokens of all of them over the wall time."""
    start = threading.Barrier(threads + 1)

    def run(index: int) -> None:
        start.wait()
        generate(models[index % len(models)], [[464, 3290 + index]], TOKENS)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return threads * TOKENS / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder = write_full_size_folder(Path(work))
        shared = [load_pretrained(folder, dtype=args.dtype)]
        own = [*shared, *(load_pretrained(folder, dtype=args.dtype) for _ in range(7))]
        cases = [(f"{n} thread(s), one shared model", shared, n) for n in (1, 2, 4, 8)]
        cases += [(f"{n} threads, a model each", own, n) for n in (2, 4, 8)]
        best = {name: 0.0 for name, _, _ in cases}
        generate(shared[0], [[464]], 4)  # warm up
        for _ in range(ROUNDS):
            for name, models, threads in cases:
                best[name] = max(best[name], tokens_per_second(models, threads))
    single = best[cases[0][0]]
    print(f"| threads ({args.dtype}, {TOKENS} tokens each, best of {ROUNDS}) | tokens/s, all "
          "threads | vs 1 thread |\n|---|---|---|")
    for name, value in best.items():
        print(f"| {name} | {value:.1f} | {value / single:.2f}x |")


if __name__ == "__main__":
    main()
