"""Conversion times for the 124M shape: ``gpt2port convert`` to every format, next to llama.cpp's
own ``convert_hf_to_gguf.py`` in the same run (each a fresh process, warm page cache).

    python benchmarks/convert.py [--llama-cpp DIR]

DIR is a llama.cpp checkout (or the ``vendor/llama.cpp`` of llama-cpp-python's sdist). Its
converter runs on gpt2port's Hugging Face export of the same weights (on the Hub's own layout it
stops at the causal-mask buffers).
"""

from __future__ import annotations

import argparse
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


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, help="llama.cpp source folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:  # the checkpoint and its exports: ~1 GB
        best = best_times(Path(work), args.llama_cpp)
    print(f"{'conversion (process wall time, best of ' + str(ROUNDS) + ')':56} {'seconds':>8}")
    for label, seconds in best.items():
        print(f"{label:56} {seconds:8.2f}")
    if LLAMA in best:
        ratio = best["gpt2port convert --to gguf --dtype f16"] / best[LLAMA]
        print(f"{'gguf f16: gpt2port / convert_hf_to_gguf.py':56} {ratio:8.2f}x")


def best_times(work: Path, llama_cpp: Path | None) -> dict[str, float]:
    """Each conversion's best process wall time over ROUNDS alternating rounds, in ``work``."""
    source = write_full_size_folder(work / "hub")
    export = work / "hf-export"  # what llama.cpp's converter reads (it stops at the Hub's masks)
    subprocess.run([sys.executable, "-m", "gpt2port", "convert", str(source), str(export),
                    "--to", "hf"], check=True, capture_output=True)
    runs = {}  # label -> (command, output): timed in ROUNDS alternating rounds, best kept
    for to, dtype in CONVERSIONS:
        output = work / f"{to}-{dtype}"
        runs[f"gpt2port convert --to {to}" + (f" --dtype {dtype}" if dtype else "")] = (
            [sys.executable, "-m", "gpt2port", "convert", str(source), str(output), "--to", to]
            + (["--dtype", dtype] if dtype else []), output)
    if llama_cpp is not None:
        output = work / "llama.gguf"
        runs[LLAMA] = ([sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"),
                        str(export), "--outtype", "f16", "--outfile", str(output)], output)
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for label, (command, output) in runs.items():
            seconds, done = timed(command)
            if done.returncode:
                raise SystemExit(f"{label} failed: {done.stderr[-500:]}")
            best[label] = min(seconds, best.get(label, seconds))
            shutil.rmtree(output) if output.is_dir() else output.unlink()
    return best


if __name__ == "__main__":
    main()
