"""Time and peak memory against model size: load, every conversion and verify at GPT-2's four
shapes, next to llama.cpp's converter and transformers, in the same run.

    python benchmarks/scale.py [--sizes 124M,355M,774M,1.5B] [--rounds 2] [--llama-cpp DIR]
                               [--chart docs/scale.png]

Each figure is one fresh process (best of the rounds, alternating): its wall time and its peak
resident memory, which counts the pages of memory-mapped files it touched; where it starts a
child (transformers' reference), the peak of the two together, sampled every 20 ms. (The
measuring process imports neither torch nor the checkpoint, since a child's peak RSS starts from
its parent's.) The
checkpoints are random weights in the Hub's layout (fp32 ``model.safetensors`` with the mask
buffers, tied head), written once per size into a temporary folder (11 GB for all four; their
exports need as much again, one size at a time). ``floor`` is the time a process takes to read
the source file and write as many bytes as the output holds: the target is at most 1.5x it.
DIR is a llama.cpp source folder (the ``vendor/llama.cpp`` of llama-cpp-python's sdist): its
``convert_hf_to_gguf.py --outtype f16`` runs on gpt2port's Hugging Face export.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"124M": (12, 768, 12), "355M": (24, 1024, 16), "774M": (36, 1280, 20),
          "1.5B": (48, 1600, 25)}
CONVERSIONS = [("gguf", "f32"), ("gguf", "f16"), ("gguf", "bf16"), ("gguf", "q8_0"), ("hf", None),
               ("hf", "bf16"),
               ("native", None), ("book", None), ("nanogpt", None), ("llmc", None),
               ("openai", None), ("tlens", None)]
LOAD = ("import sys, torch, gpt2port; model = gpt2port.load_pretrained(sys.argv[1]{dtype}); "
        "torch.inference_mode().__enter__(); model(torch.tensor([[464, 3290]]))")
TRANSFORMERS_LOAD = ("import sys, torch, transformers; model = transformers.GPT2LMHeadModel"
                     ".from_pretrained(sys.argv[1]).eval(); torch.inference_mode().__enter__(); "
                     "model(torch.tensor([[464, 3290]])){save}")
FLOOR = ("import sys\nsource, target, size = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
         "chunk = 64 << 20\nwith open(source, 'rb') as read, open(target, 'wb') as write:\n"
         "    while block := read.read(chunk):\n        if size > 0:\n"
         "            write.write(block[:size]); size -= len(block)\n"
         "    while size > 0:\n        write.write(block[:size] if block else bytes(min(chunk, size)))"
         "\n        size -= chunk\n")


class HubLayout:
    """The tensors of the Hub's ``openai-community/gpt2`` layout for a shape, made one at a
    time from a seeded generator (what ``gpt2port.io.writers.write_safetensors`` takes)."""

    def __init__(self, layers: int, width: int):
        import torch

        self.dtype, self.shapes = torch.float32, {"wte.weight": (50257, width),
                                                  "wpe.weight": (1024, width)}
        for i in range(layers):
            h = f"h.{i}"
            self.shapes.update({
                f"{h}.ln_1.weight": (width,), f"{h}.ln_1.bias": (width,),
                f"{h}.attn.bias": (1, 1, 1024, 1024),
                f"{h}.attn.c_attn.weight": (width, 3 * width), f"{h}.attn.c_attn.bias": (3 * width,),
                f"{h}.attn.c_proj.weight": (width, width), f"{h}.attn.c_proj.bias": (width,),
                f"{h}.ln_2.weight": (width,), f"{h}.ln_2.bias": (width,),
                f"{h}.mlp.c_fc.weight": (width, 4 * width), f"{h}.mlp.c_fc.bias": (4 * width,),
                f"{h}.mlp.c_proj.weight": (4 * width, width), f"{h}.mlp.c_proj.bias": (width,)})
        self.shapes.update({"ln_f.weight": (width,), "ln_f.bias": (width,)})
        self._random = np.random.default_rng(0)

    def __getitem__(self, name: str):
        import torch

        shape = self.shapes[name]
        if name.endswith(".attn.bias"):  # the causal mask buffer
            return torch.ones(1024, 1024).tril().view(shape)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            return torch.ones(shape)
        values = self._random.standard_normal(shape, dtype=np.float32)
        return torch.from_numpy(values * np.float32(0.02))


def write_checkpoint(folder: Path, size: str) -> Path:
    from gpt2port.io.writers import write_safetensors

    layers, width, heads = SHAPES[size]
    folder.mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", HubLayout(layers, width),
                      metadata={"format": "pt"})
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257,
              "n_positions": 1024, "n_ctx": 1024, "n_embd": width, "n_layer": layers,
              "n_head": heads, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "bos_token_id": 50256, "eos_token_id": 50256}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(ROOT / "gpt2port" / "data" / name, folder / name)
    return folder


def tree_rss(pid: int) -> int:
    """The resident bytes of a process and all its descendants now."""
    total, pending = 0, [pid]
    while pending:
        each = pending.pop()
        try:
            with open(f"/proc/{each}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{each}/task/{each}/children") as children:
                pending += [int(child) for child in children.read().split()]
        except (OSError, ValueError):
            continue
    return total


def measured(command: list[str], env: dict | None = None) -> tuple[float, int, int, str]:
    """Wall seconds, peak resident bytes (the process's own high-water mark, or its tree's
    sampled sum where higher), exit status and the end of stderr of one fresh process."""
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        peak, done = 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.02):
                peak = max(peak, tree_rss(process.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        said = errors.read()[-400:]
    return seconds, max(peak, usage.ru_maxrss * 1024), process.returncode, said


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(each.stat().st_size for each in path.rglob("*") if each.is_file())


def tasks(folder: Path, work: Path, llama_cpp: Path | None) -> list[tuple[str, list, Path | None]]:
    """(label, command, output) for every figure of one size."""
    python, gpt2port = sys.executable, [sys.executable, "-m", "gpt2port"]
    found = [("load + first logits", [python, "-c", LOAD.format(dtype=""), str(folder)], None),
             ("load bf16 + first logits",
              [python, "-c", LOAD.format(dtype=", dtype='bf16'"), str(folder)], None),
             ("transformers from_pretrained + first logits",
              [python, "-c", TRANSFORMERS_LOAD.format(save=""), str(folder)], None)]
    saved = work / "transformers"
    found.append(("transformers from_pretrained + save_pretrained",
                  [python, "-c", TRANSFORMERS_LOAD.format(
                      save=f"; model.save_pretrained({str(saved)!r})"), str(folder)], saved))
    for to, dtype in CONVERSIONS:
        output = work / f"{to}-{dtype or 'own'}"
        found.append((f"convert --to {to}" + (f" --dtype {dtype}" if dtype else ""),
                      [*gpt2port, "convert", str(folder), str(output), "--to", to]
                      + (["--dtype", dtype] if dtype else []), output))
    for reference in ("numpy", "transformers"):
        found.append((f"verify --reference {reference}",
                      [*gpt2port, "verify", str(folder), "--reference", reference], None))
    if llama_cpp is not None:
        output = work / "llama.gguf"
        found.append((LLAMA, [python, str(llama_cpp / "convert_hf_to_gguf.py"),
                              str(work / "hf-own"), "--outtype", "f16", "--outfile", str(output)],
                      output))
    return found


LLAMA = "llama.cpp convert_hf_to_gguf.py --outtype f16"


def measure_size(size: str, work: Path, rounds: int, llama_cpp: Path | None) -> dict:
    """label -> (best seconds, highest peak bytes, floor seconds or None)."""
    folder = work / "source"
    # written by a child: a process's peak RSS starts from its parent's at fork and exec, so the
    # measuring process stays small (no torch, no tensors)
    writing = ("import sys, pathlib, scale; "
               "scale.write_checkpoint(pathlib.Path(sys.argv[1]), sys.argv[2])")
    subprocess.run([sys.executable, "-c", writing, str(folder), size], check=True,
                   cwd=Path(__file__).parent)
    results: dict[str, list] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for round_ in range(rounds):
        for label, command, output in tasks(folder, work, llama_cpp):
            seconds, peak, status, said = measured(command, env)
            if status != 0:
                raise SystemExit(f"{size} {label}: exit {status}\n{said}")
            floor = None
            if output is not None:
                if round_ == 0:  # the floor of this output's size (disk-bound: once is enough)
                    floor = measured([sys.executable, "-c", FLOOR,
                                      str(folder / "model.safetensors"), str(work / "floor"),
                                      str(size_of(output))])[0]
                    (work / "floor").unlink()
                if output.name != "hf-own":
                    shutil.rmtree(output) if output.is_dir() else output.unlink()
            best = results.setdefault(label, [seconds, peak, floor])
            best[0], best[1] = min(best[0], seconds), max(best[1], peak)
        shutil.rmtree(work / "hf-own", ignore_errors=True)
    shutil.rmtree(folder)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SHAPES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--llama-cpp", type=Path, help="llama.cpp source folder")
    parser.add_argument("--chart", type=Path, help="draw time and peak memory to this PNG")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    table = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as work:
        for size in sizes:
            table[size] = measure_size(size, Path(work), args.rounds, args.llama_cpp)
            print(f"# {size} done", file=sys.stderr, flush=True)
    print(f"machine: {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"best of {args.rounds} alternating rounds; peak RSS in GiB")
    print("| | " + " | ".join(sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for label in table[sizes[0]]:
        cells = []
        for size in sizes:
            seconds, peak, floor = table[size][label]
            ratio = f" ({seconds / floor:.2f}x floor)" if floor else ""
            cells.append(f"{seconds:.1f} s{ratio}, {peak / 2**30:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.chart:
        draw(table, sizes, args.chart)


def draw(table: dict, sizes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parameters = {"124M": 0.124, "355M": 0.355, "774M": 0.774, "1.5B": 1.558}
    x = [parameters[size] for size in sizes]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for label in table[sizes[0]]:
        left.plot(x, [table[size][label][0] for size in sizes], marker="o", label=label)
        right.plot(x, [table[size][label][1] / 2**30 for size in sizes], marker="o")
    left.set(xlabel="parameters (billions)", ylabel="wall time (s)", title="time")
    right.set(xlabel="parameters (billions)", ylabel="peak RSS (GiB)", title="peak memory")
    figure.legend(loc="lower center", ncol=3, fontsize=7)
    figure.tight_layout(rect=(0, 0.2, 1, 1))
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
