"""Conversion times for the 124M shape: ``gpt2port convert`` to every format, next to llama.cpp's
own ``convert_hf_to_gguf.py`` in the same run (each a fresh process, warm page cache).

    python benchmarks/convert.py [--llama-cpp DIR]

DIR is a llama.cpp checkout (or the ``vendor/llama.cpp`` of llama-cpp-python's sdist). Its
converter is run twice: on the Hub's own layout, where it stops at the causal-mask buffers, and
on gpt2port's Hugging Face export of the same weights.
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


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, help="llama.cpp source folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    source = write_full_size_folder(work / "hub")
    print(f"source: 124M-shape checkpoint in the Hub's layout, {source}")
    print(f"{'conversion':52} {'seconds':>8}  result")
    for to, dtype in CONVERSIONS:
        output = work / f"{to}-{dtype}"
        command = [sys.executable, "-m", "gpt2port", "convert", str(source), str(output),
                   "--to", to] + (["--dtype", dtype] if dtype else [])
        seconds, done = timed(command)
        label = f"gpt2port convert --to {to}" + (f" --dtype {dtype}" if dtype else "")
        print(f"{label:52} {seconds:8.2f}  {'ok' if done.returncode == 0 else done.stderr[-200:]}")
    if args.llama_cpp is None:
        return
    converter = args.llama_cpp / "convert_hf_to_gguf.py"
    for label, folder in (("on the Hub's layout", source), ("on gpt2port's hf export",
                                                            work / "hf-None")):
        seconds, done = timed([sys.executable, str(converter), str(folder), "--outtype", "f16",
                               "--outfile", str(work / "llama.gguf")])
        result = "ok" if done.returncode == 0 else done.stderr.strip().splitlines()[-1]
        print(f"{'convert_hf_to_gguf.py f16 ' + label:52} {seconds:8.2f}  {result}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
