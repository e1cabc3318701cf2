"""Conversion times for the 124M shape: ``gpt2port convert`` to every format, next to llama.cpp's
own ``convert_hf_to_gguf.py`` in the same run (each a fresh process, warm page cache).

    python benchmarks/convert.py [--llama-cpp DIR] [--baseline CHECKOUT]

DIR is a llama.cpp checkout (or the ``vendor/llama.cpp`` of llama-cpp-python's sdist). Its
converter runs on gpt2port's Hugging Face export of the same weights (on the Hub's own layout it
stops at the causal-mask buffers). ``--baseline`` times another checkout's gpt2port (an earlier
commit's worktree, say) in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from checkpoint import write_full_size_folder

CONVERSIONS = (("gguf", "f32"), ("gguf", "f16"), ("gguf", "q8_0"), ("hf", None),
               ("openai", None), ("native", None))
LLAMA = "llama.cpp convert_hf_to_gguf.py --outtype f16"
ROUNDS = 3  # fresh processes, alternating; a noisy spell does not favour one side


def timed(command: list[str], env: dict | None = None
          ) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, help="llama.cpp source folder")
    parser.add_argument("--baseline", type=Path, help="another checkout, timed alongside")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:  # the checkpoint and its exports: ~1 GB
        best = best_times(Path(work), args.llama_cpp, args.baseline)
    print(f"{'conversion (process wall time, best of ' + str(ROUNDS) + ')':56} {'seconds':>8}")
    for label, seconds in best.items():
        print(f"{label:56} {seconds:8.2f}")
    if LLAMA in best:
        ratio = best["gpt2port convert --to gguf --dtype f16"] / best[LLAMA]
        print(f"{'gguf f16: gpt2port / convert_hf_to_gguf.py':56} {ratio:8.2f}x")
    for label in [label for label in best if label.startswith("gpt2port")]:
        baseline = label.replace("gpt2port", "baseline", 1)
        if baseline in best:
            print(f"{label.replace('gpt2port convert', 'this / baseline'):56} "
                  f"{best[label] / best[baseline]:8.2f}x")


def best_times(work: Path, llama_cpp: Path | None, baseline: Path | None = None
               ) -> dict[str, float]:
    """Each conversion's best process wall time over ROUNDS alternating rounds, in ``work``."""
    source = write_full_size_folder(work / "hub")
    export = work / "hf-export"  # what llama.cpp's converter reads (it stops at the Hub's masks)
    subprocess.run([sys.executable, "-m", "gpt2port", "convert", str(source), str(export),
                    "--to", "hf"], check=True, capture_output=True)
    runs = {}  # label -> (command, output, env): timed in ROUNDS alternating rounds, best kept
    sides = {"gpt2port": None}
    if baseline is not None:
        sides["baseline"] = {**os.environ, "PYTHONPATH": str(baseline.resolve())}
    for to, dtype in CONVERSIONS:
        for side, env in sides.items():
            output = work / f"{side}-{to}-{dtype}"
            runs[f"{side} convert --to {to}" + (f" --dtype {dtype}" if dtype else "")] = (
                [sys.executable, "-m", "gpt2port", "convert", str(source), str(output), "--to",
                 to] + (["--dtype", dtype] if dtype else []), output, env)
    if llama_cpp is not None:
        output = work / "llama.gguf"
        runs[LLAMA] = ([sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"),
                        str(export), "--outtype", "f16", "--outfile", str(output)], output, None)
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for label, (command, output, env) in runs.items():
            seconds, done = timed(command, env)
            if done.returncode:
                raise SystemExit(f"{label} failed: {done.stderr[-500:]}")
            best[label] = min(seconds, best.get(label, seconds))
            shutil.rmtree(output) if output.is_dir() else output.unlink()
    return best


if __name__ == "__main__":
    main()
