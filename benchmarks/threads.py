"""Tokens per second of threads generating at once: 1, 2, 4 and 8 threads sharing one model,
and one model per thread, in the same run (alternating rounds, best of each). ``compare.py``
prints the same rows.

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
COUNTS = (1, 2, 4, 8)


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


def throughputs(folder: Path, dtype: str, *, rounds: int = ROUNDS, own: bool = True
                ) -> dict[str, float]:
    """Each case's best tokens/s of all threads, by name; the first case is one thread."""
    shared = [load_pretrained(folder, dtype=dtype)]
    cases = [(f"{n} thread(s), one shared model", shared, n) for n in COUNTS]
    if own:
        models = [*shared, *(load_pretrained(folder, dtype=dtype)
                             for _ in range(max(COUNTS) - 1))]
        cases += [(f"{n} threads, a model each", models, n) for n in COUNTS[1:]]
    best = {name: 0.0 for name, _, _ in cases}
    generate(shared[0], [[464]], 4)  # warm up
    for _ in range(rounds):
        for name, models, threads in cases:
            best[name] = max(best[name], tokens_per_second(models, threads))
    return best


def rows(best: dict[str, float], dtype: str) -> list[str]:
    single = next(iter(best.values()))
    header = (f"| threads generating at once ({dtype}, {TOKENS} tokens each) | tokens/s, all "
              "threads | vs 1 thread |")
    lines = [header, "|---|---|---|"]
    return lines + [f"| {name} | {value:.1f} | {value / single:.2f}x |"
                    for name, value in best.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        best = throughputs(write_full_size_folder(Path(work)), args.dtype)
    print("\n".join(rows(best, args.dtype)))


if __name__ == "__main__":
    main()
