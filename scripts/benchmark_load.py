"""Load time and peak memory: gpt2port.load_pretrained next to transformers, same folder, same run.

Each measurement runs in a fresh Python process, so neither loader benefits from the other's
imports or allocations. The page cache is warmed first, so both read from memory.

    python scripts/benchmark_load.py [FOLDER]    # default: writes a 124M-shape Hub-layout folder
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
start = time.perf_counter()
import torch
imported = time.perf_counter()
folder, loader = sys.argv[1], sys.argv[2]
if loader == "gpt2port":
    from gpt2port import load_pretrained
    load = lambda: load_pretrained(folder)
    logits_of = lambda model, ids: model(ids)
else:
    from transformers import GPT2LMHeadModel
    load = lambda: GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    logits_of = lambda model, ids: model(ids).logits
begin = time.perf_counter()
model = load()
loaded = time.perf_counter()
with torch.inference_mode():
    logits_of(model, torch.tensor([[464, 3290]]))
first_logits = time.perf_counter()
print(json.dumps({
    "load_s": loaded - begin,
    "process_start_to_first_logits_s": first_logits - start,
    "import_torch_s": imported - start,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""
LOADERS = ("gpt2port", "transformers")


def measure(folder: Path, loader: str) -> dict:
    output = subprocess.run([sys.executable, "-c", CHILD, str(folder), loader], check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def write_full_size_folder(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch
    from checkpoints import write_hub_layout
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return write_hub_layout(GPT2LMHeadModel(GPT2Config()).eval(), folder)


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else write_full_size_folder(
        Path(tempfile.mkdtemp()) / "gpt2-124m")
    (folder / "model.safetensors").read_bytes()  # warm the page cache
    runs = {loader: [measure(folder, loader) for _ in range(5)] for loader in LOADERS}
    medians = {loader: {key: statistics.median(run[key] for run in results)
                        for key in results[0]} for loader, results in runs.items()}
    print(f"checkpoint: {folder}  (median of 5 fresh processes each)")
    print(f"{'measure':36} {'gpt2port':>10} {'transformers':>13} {'ratio':>7}")
    for key in medians["gpt2port"]:
        ours, theirs = medians["gpt2port"][key], medians["transformers"][key]
        print(f"{key:36} {ours:10.3f} {theirs:13.3f} {ours / theirs:7.2f}")


if __name__ == "__main__":
    main()
