"""gpt2port next to transformers and llama.cpp, same checkpoint, same run, ratios printed.

    python benchmarks/compare.py [--write-docs] [--baseline DIR] [--llama-bench PATH]
                                                          # ~15 min on 2 cores with llama.cpp

llama.cpp is measured by its own ``llama-bench`` where ``--llama-bench`` gives the binary (built
from the llama.cpp sources vendored in llama-cpp-python's sdist: docs/benchmarks.md), batches by
``llama-batched-bench`` from the same folder, and through
llama-cpp-python's ``Llama`` (the binding: its Python sampling adds per-token cost) where that is
installed; both on gpt2port's own GGUF exports, in the same alternating rounds.

``--baseline DIR`` measures the gpt2port of another checkout (a ``git worktree`` of an earlier
commit, say) as a third implementation in the same rounds, and prints its ratios to this one.

Every measurement runs in a fresh Python process per implementation, so none benefits from
another's imports, allocations or warm caches. The checkpoint is the 124M shape in the Hub's
exact layout (``checkpoint.py``), read from a warm page cache. ``--write-docs`` rewrites
``docs/benchmarks.md`` and its chart (the chart needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from checkpoint import ROOT, write_full_size_folder

THREADS = os.cpu_count()
PROMPT = [464, 3290]  # "The dog"
NEW_TOKENS = 64
BATCHES = "4,8"  # sequences decoded at once, by gpt2port, transformers and llama-batched-bench
IMPLEMENTATIONS = ("gpt2port", "transformers")
ROUNDS = 3  # speed measurements: fresh processes, alternating, best of all rounds

LOAD = r"""
import json, sys, time
start = time.perf_counter()

def peak_rss_mib():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over exec)
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

import torch
folder, implementation = sys.argv[1], sys.argv[2]
if implementation != "transformers":  # gpt2port, or the baseline checkout's
    from gpt2port import load_pretrained
    model = load_pretrained(folder)
    logits = lambda ids: model(ids)
else:
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    logits = lambda ids: model(ids).logits
loaded = time.perf_counter()
with torch.inference_mode():
    logits(torch.tensor([[464, 3290]]))
print(json.dumps({"start_to_first_logits_s": time.perf_counter() - start,
                  "start_to_model_s": loaded - start,
                  "peak_rss_mib": peak_rss_mib()}))
"""

SPEED = r"""
import json, sys, time
import torch
folder, implementation, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
batches = [int(batch) for batch in sys.argv[4].split(",")]
prompt = torch.tensor([[464, 3290]])

def best(run, repeats):
    # the shortest of `repeats` runs after a warm-up: the time `run` returns, else its own
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        took = run()
        times.append(took if isinstance(took, float) else time.perf_counter() - start)
    return min(times)

if implementation != "transformers":
    from gpt2port import generate, load_pretrained
    load = lambda dtype: load_pretrained(folder, dtype=dtype)
    forward = lambda model, ids: model(ids)
    decode = lambda model, ids: generate(model, ids, new_tokens)  # the default path: no flag
    from gpt2port import stream

    def steps(model):  # the time of new_tokens one-token steps after the prompt and first token
        tokens = stream(model, prompt, new_tokens + 1)
        next(tokens)
        start = time.perf_counter()
        for _ in tokens:
            pass
        return time.perf_counter() - start
else:
    from transformers import GPT2LMHeadModel
    load = lambda dtype: GPT2LMHeadModel.from_pretrained(folder, dtype=dtype).eval()
    forward = lambda model, ids: model(ids).logits
    decode = lambda model, ids: model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
results = {}
with torch.inference_mode():
    model = load(torch.float32)
    for batch, tokens in ((1, 1024), (8, 128)):
        ids = torch.randint(0, 50257, (batch, tokens), generator=torch.Generator().manual_seed(0))
        results[f"forward_{batch}x{tokens}_s"] = best(lambda: forward(model, ids), 3)
    for dtype in ("float32", "bfloat16", "float16"):
        model = load(getattr(torch, dtype))
        results[f"decode_{dtype}_tokens_per_s"] = new_tokens / best(
            lambda: decode(model, prompt), 3)
        if implementation != "transformers":  # as llama-bench's: one-token steps, no prompt
            results[f"steps_{dtype}_tokens_per_s"] = new_tokens / best(lambda: steps(model), 3)
        if dtype == "bfloat16" or (dtype == "float16" and implementation == "transformers"):
            continue  # batches: fp32 on both sides, and gpt2port's fp16 against llama.cpp's f16
        for batch in batches:  # prompts of the same length, as llama-batched-bench's
            ids = torch.tensor([[464, 3290 + row] for row in range(batch)])
            results[f"decode_batch{batch}_{dtype}_tokens_per_s"] = batch * new_tokens / best(
                lambda: decode(model, ids), 2)
print(json.dumps(results))
"""

LLAMA = r"""
import json, sys, time
from llama_cpp import Llama
path, new_tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(path, n_ctx=256, n_threads=threads, verbose=False)
def run():
    llm.reset()
    count = 0
    for _ in llm.generate([464, 3290], temp=0.0, top_k=1):
        count += 1
        if count == new_tokens:
            break
run()
times = []
for _ in range(3):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
print(json.dumps({"decode_tokens_per_s": new_tokens / min(times)}))
"""


COMPILE = r"""
import json, os, sys, time
os.environ["XDG_CACHE_HOME"] = sys.argv[1]  # cold: an empty folder; warm: the same, built
start = time.perf_counter()
from gpt2port.engine import compiled_step
imported = time.perf_counter()
compiled_step.library()
print(json.dumps({"library_s": time.perf_counter() - imported}))
"""


THREADS_ROWS = r"""
import json, sys
sys.path.insert(0, sys.argv[2])  # benchmarks/
from pathlib import Path
from threads import throughputs
print(json.dumps(throughputs(Path(sys.argv[1]), "float32", rounds=2, own=False)))
"""


GPU = r"""
import json, sys, time
import torch
from gpt2port import generate, load_pretrained
from transformers import GPT2LMHeadModel
folder, new_tokens = sys.argv[1], int(sys.argv[2])
prompt = torch.tensor([[464, 3290]], device="cuda")

def tokens_per_s(run):
    run(); run()  # warm-up (and capture, compile)
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        ids = run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return new_tokens / min(times), ids[0, -new_tokens:].tolist()

ours = load_pretrained(folder, device="cuda", dtype=torch.float32)
theirs = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).to("cuda").eval()
hf = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
results, ids = {}, {}
results["gpt2port_eager"], ids["gpt2port_eager"] = tokens_per_s(
    lambda: generate(ours, prompt, new_tokens))
results["gpt2port_cuda_graph"], ids["gpt2port_cuda_graph"] = tokens_per_s(
    lambda: generate(ours, prompt, new_tokens, static_cache=True))
results["transformers_eager"], ids["transformers_eager"] = tokens_per_s(
    lambda: theirs.generate(prompt, **hf))
try:  # transformers' own fast path: a static cache and torch.compile
    theirs.forward = torch.compile(theirs.forward, mode="reduce-overhead", fullgraph=True)
    results["transformers_static_compiled"], ids["transformers_static_compiled"] = (
        tokens_per_s(lambda: theirs.generate(prompt, cache_implementation="static", **hf)))
except Exception as error:  # noqa: BLE001 - reported, not fatal: the other rows still count
    results["transformers_static_compiled_error"] = repr(error)[:300]
results["same_greedy_ids"] = len({tuple(each) for each in ids.values()}) == 1
results["device"] = torch.cuda.get_device_name()
print(json.dumps(results))
"""


def gpu_rows(folder: Path) -> list[str]:
    """Batch-1 fp32 decode on CUDA, where there is a GPU: gpt2port eager and from a CUDA graph,
    transformers eager and with its static cache + torch.compile."""
    import torch

    if not torch.cuda.is_available():
        return []
    found = child(GPU, folder, NEW_TOKENS)
    base = found["transformers_eager"]
    header = (f"| GPU ({found['device']}) greedy decode, batch 1, fp32 | tok/s | "
              f"vs transformers eager | same greedy ids: {found['same_greedy_ids']} |")
    lines = [header]
    for key in ("gpt2port_eager", "gpt2port_cuda_graph", "transformers_eager",
                "transformers_static_compiled"):
        if key in found:
            lines.append(f"| {key.replace('_', ' ')} | {found[key]:.0f} | "
                         f"{found[key] / base:.2f}x | |")
    if "transformers_static_compiled_error" in found:
        lines.append(f"| transformers static + compile | failed: "
                     f"{found['transformers_static_compiled_error']} | | |")
    return lines


BASELINE: dict[str, str] = {}  # implementation -> the checkout its gpt2port is imported from


def child(code: str, *args) -> dict:
    """Run ``code`` in a fresh process; args[1], where it names the baseline, imports its
    gpt2port."""
    env = dict(os.environ)
    if len(args) > 1 and args[1] in BASELINE:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [BASELINE[args[1]],
                                                          env.get("PYTHONPATH")]))
    # run outside the checkout: ``python -c`` puts the working folder first on sys.path, which
    # would import this checkout's gpt2port in place of the baseline's
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, check=False, env=env, cwd=tempfile.gettempdir())
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(code: str, runs: int, *args) -> dict:
    results = [child(code, *args) for _ in range(runs)]
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def binding_installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def gguf_exports(folder: Path, work: Path) -> dict[str, Path]:
    """gpt2port's own GGUF exports (f32, f16) for llama.cpp."""
    exports = {}
    for dtype in ("f32", "f16"):
        exports[dtype] = work / f"gpt2-{dtype}.gguf"
        subprocess.run([sys.executable, "-m", "gpt2port", "convert", str(folder),
                        str(exports[dtype]), "--to", "gguf", "--dtype", dtype], check=True,
                       capture_output=True)
    return exports


def compile_cost(work: Path) -> dict:
    """The compiled step's one-time cost: built into an empty cache (cold), then found there by
    a new process (warm); the best of 3 of each."""
    cold = [child(COMPILE, work / f"cold-cache-{attempt}")["library_s"] for attempt in range(3)]
    warm = [child(COMPILE, work / "cold-cache-0")["library_s"] for _ in range(3)]
    return {"compile_cold_s": min(cold), "compile_warm_s": min(warm)}


def llama_cpp(exports: dict[str, Path]) -> dict:
    """llama.cpp's decode speed through llama-cpp-python on each export, a fresh process each."""
    return {f"decode_{dtype}_tokens_per_s": child(LLAMA, path, NEW_TOKENS,
                                                  THREADS)["decode_tokens_per_s"]
            for dtype, path in exports.items()}


def llama_batched_bench(binary: Path, exports: dict[str, Path]) -> dict:
    """llama.cpp's own ``llama-batched-bench`` (next to ``llama-bench``): 4 and 8 sequences of a
    2-token prompt generating NEW_TOKENS each, THREADS threads; its generation tokens/s."""
    found = {}
    for dtype, path in exports.items():
        done = subprocess.run([str(binary), "-m", str(path), "-c", "1024", "-npp", "2", "-ntg",
                               str(NEW_TOKENS), "-npl", BATCHES, "-t", str(THREADS),
                               "--output-format", "jsonl"], capture_output=True, text=True,
                              check=True)
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                found[f"decode_batch{row['pl']}_{dtype}_tokens_per_s"] = row["speed_tg"]
    return found


def llama_bench(binary: Path, exports: dict[str, Path]) -> dict:
    """llama.cpp's own ``llama-bench``: NEW_TOKENS generated (no prompt), THREADS threads, its
    best repetition, on each export."""
    found = {}
    for dtype, path in exports.items():
        done = subprocess.run([str(binary), "-m", str(path), "-p", "0", "-n", str(NEW_TOKENS),
                               "-t", str(THREADS), "-r", "3", "-o", "json"],
                              capture_output=True, text=True, check=True)
        found[f"decode_{dtype}_tokens_per_s"] = max(json.loads(done.stdout)[0]["samples_ts"])
    return found


ROWS = (  # (key, label, unit, lower is better)
    ("start_to_first_logits_s", "process start to first logits", "s", True),
    ("start_to_model_s", "process start to usable model", "s", True),
    ("peak_rss_mib", "peak RSS", "MiB", True),
    ("forward_1x1024_s", "forward [1, 1024], fp32", "s", True),
    ("forward_8x128_s", "forward [8, 128], fp32", "s", True),
    ("decode_float32_tokens_per_s", "greedy decode, batch 1, fp32", "tok/s", False),
    ("decode_bfloat16_tokens_per_s", "greedy decode, batch 1, bf16", "tok/s", False),
    ("decode_float16_tokens_per_s", "greedy decode, batch 1, fp16", "tok/s", False),
)


def table(ours: dict, theirs: dict, llama: dict, bench: dict) -> list[str]:
    lines = ["| measure | gpt2port | transformers | ratio |", "|---|---|---|---|"]
    for key, label, unit, _ in ROWS:
        lines.append(f"| {label} ({unit}) | {ours[key]:.3f} | {theirs[key]:.3f} | "
                     f"{ours[key] / theirs[key]:.2f}x |")
    bf16 = ours["decode_bfloat16_tokens_per_s"] / theirs["decode_float32_tokens_per_s"]
    fp16 = ours["decode_float16_tokens_per_s"] / theirs["decode_float32_tokens_per_s"]
    lines.append(f"| gpt2port bf16 / fp16 decode vs transformers fp32 | | | "
                 f"{bf16:.2f}x / {fp16:.2f}x |")
    for batch in BATCHES.split(","):
        key = f"decode_batch{batch}_float32_tokens_per_s"
        lines.append(f"| greedy decode, batch {batch}, fp32 (tok/s, all rows) | {ours[key]:.1f} | "
                     f"{theirs[key]:.1f} | {ours[key] / theirs[key]:.2f}x |")
    lines.append(f"| the compiled step's one-time cost: built (first use on a machine) / found "
                 f"in the cache (a later process) (s) | {ours['compile_cold_s']:.2f} / "
                 f"{ours['compile_warm_s']:.4f} | | |")
    pairs = (("f32", "float32", "f32"), ("f16", "float16", "f16"), ("bf16", "bfloat16", "f16"))
    for peer, measured in (("llama-bench", bench), ("llama-cpp-python binding", llama)):
        for label, ours_dtype, gguf in pairs:  # bf16 against llama.cpp's f16, as issue 12 set
            if f"decode_{gguf}_tokens_per_s" not in measured:
                continue
            value = measured[f"decode_{gguf}_tokens_per_s"]
            for what, key in (("greedy decode", f"decode_{ours_dtype}_tokens_per_s"),
                              ("one-token steps (no prompt, as llama-bench's)",
                               f"steps_{ours_dtype}_tokens_per_s")):
                if key in ours:
                    lines.append(f"| {what}, batch 1, gpt2port {label} vs llama.cpp {gguf} "
                                 f"({peer}) on gpt2port's GGUF (tok/s) | {ours[key]:.1f} | "
                                 f"{peer} {value:.1f} | {ours[key] / value:.2f}x |")
    for batch in BATCHES.split(","):
        for label, gguf in (("float32", "f32"), ("float16", "f16")):
            key = f"decode_batch{batch}_{gguf}_tokens_per_s"
            if key in bench:
                found = ours[f"decode_batch{batch}_{label}_tokens_per_s"]
                lines.append(f"| greedy decode, batch {batch}, gpt2port {gguf} vs llama.cpp {gguf} "
                             f"(llama-batched-bench) (tok/s, all rows) | {found:.1f} | "
                             f"llama-batched-bench {bench[key]:.1f} | {found / bench[key]:.2f}x |")
    return lines


def baseline_table(ours: dict, baseline: dict, where: str) -> list[str]:
    """This checkout's figures next to the baseline's, measured in the same rounds."""
    lines = [f"| measure | gpt2port | baseline ({where}) | ratio |", "|---|---|---|---|"]
    for key, label, unit, _ in ROWS:
        lines.append(f"| {label} ({unit}) | {ours[key]:.3f} | {baseline[key]:.3f} | "
                     f"{ours[key] / baseline[key]:.2f}x |")
    return lines


def machine() -> str:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return (f"{model}, {THREADS} cores, Linux {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def chart(ours: dict, theirs: dict, llama: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["fp32", "bf16", "fp16"]
    keys = [f"decode_{d}_tokens_per_s" for d in ("float32", "bfloat16", "float16")]
    figure, axis = plt.subplots(figsize=(7, 3.6))
    x = range(len(labels))
    axis.bar([i - 0.2 for i in x], [ours[k] for k in keys], 0.4, label="gpt2port")
    axis.bar([i + 0.2 for i in x], [theirs[k] for k in keys], 0.4, label="transformers")
    if llama:
        axis.axhline(llama.get("decode_f32_tokens_per_s", 0), ls="--", c="gray",
                     label="llama.cpp f32")
        axis.axhline(llama.get("decode_f16_tokens_per_s", 0), ls=":", c="black",
                     label="llama.cpp f16")
    axis.set_xticks(list(x), labels)
    axis.set_ylabel("greedy decode, tokens/s (batch 1)")
    axis.set_title("GPT-2 124M shape on CPU")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--baseline", type=Path, help="another checkout, measured alongside")
    parser.add_argument("--llama-bench", type=Path, help="llama.cpp's llama-bench binary "
                        "(llama-batched-bench is taken from its folder)")
    args = parser.parse_args()
    batched_bench = args.llama_bench and args.llama_bench.with_name("llama-batched-bench")
    implementations = IMPLEMENTATIONS
    if args.baseline is not None:
        BASELINE["baseline"] = str(args.baseline.resolve())
        implementations = (*IMPLEMENTATIONS, "baseline")
    with tempfile.TemporaryDirectory() as temporary:  # ~1.3 GB: checkpoint and GGUFs
        work = Path(temporary)
        folder = write_full_size_folder(work / "gpt2-124m")
        results = {name: median_of(LOAD, 5, folder, name) for name in implementations}
        binding = binding_installed()
        exports = gguf_exports(folder, work) if binding or args.llama_bench else {}
        speeds = {name: [] for name in implementations}
        llama_runs, bench_runs = [], []
        for _ in range(ROUNDS):  # interleaved, so that a noisy spell does not favour one side
            for name in implementations:
                speeds[name].append(child(SPEED, folder, name, NEW_TOKENS, BATCHES))
            if args.llama_bench:
                bench_runs.append(llama_bench(args.llama_bench, exports))
                if batched_bench.exists():
                    bench_runs[-1].update(llama_batched_bench(batched_bench, exports))
            if binding:
                llama_runs.append(llama_cpp(exports))
        for name, runs in speeds.items():
            results[name].update({key: (max if key.endswith("per_s") else min)(r[key] for r in runs)
                                  for key in runs[0]})
        results["gpt2port"].update(compile_cost(work))
        from threads import rows as threads_rows  # imports gpt2port: here, not at the top

        threads = threads_rows(child(THREADS_ROWS, folder, Path(__file__).resolve().parent),
                               "float32, one shared model")
        gpu = gpu_rows(folder)
    llama, bench = ({key: max(run[key] for run in runs) for key in runs[0]} if runs else {}
                    for runs in (llama_runs, bench_runs))
    lines = [*table(results["gpt2port"], results["transformers"], llama, bench), *gpu, "",
             *threads]
    print(f"machine: {machine()}\n" + "\n".join(lines))
    if args.baseline is not None:
        print("\n".join(["", *baseline_table(results["gpt2port"], results["baseline"],
                                             str(args.baseline))]))
    if args.write_docs:
        docs = ROOT / "docs" / "benchmarks.md"
        intro = docs.read_text().split("<!-- results -->")[0] if docs.exists() else ""
        docs.write_text(intro + "<!-- results -->\n\nMachine: " + machine() + "\n\n"
                        + "\n".join(lines) + "\n\n![decode speed](benchmarks.png)\n")
        chart(results["gpt2port"], results["transformers"], bench or llama,
              docs.with_suffix(".png"))


if __name__ == "__main__":
    main()
