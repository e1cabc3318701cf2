"""The ONNX export's time and peak memory next to optimum's, in the same run.

    python benchmarks/onnx_export.py [--sizes 124M,1.5B] [--rounds 2] [--optimum PYTHON]

Each size's checkpoint is random weights in the Hub's layout (``scale.write_checkpoint``).
gpt2port runs ``gpt2port convert SRC DST --to onnx``; optimum runs ``optimum-cli export onnx
--task text-generation-with-past`` on the same folder, from its own venv (PYTHON, default
``.venv-optimum/bin/python``, made by ``scripts/install_references.sh``). Each figure is one
fresh process (``scale.measured``: wall time, peak resident memory of the process tree), the
rounds alternating between the two, best of each. A run that fails (optimum out of memory, say)
is reported with its exit status.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from scale import ROOT, measured, size_of, write_checkpoint

GIB = 1 << 30


def commands(source: Path, work: Path, optimum: Path) -> dict[str, tuple[list[str], Path]]:
    ours, theirs = work / "gpt2port-onnx", work / "optimum-onnx"
    return {
        "gpt2port": ([sys.executable, "-m", "gpt2port", "convert", str(source), str(ours),
                      "--to", "onnx"], ours),
        "optimum": ([str(optimum), "-m", "optimum.commands.optimum_cli", "export", "onnx",
                     "--model", str(source), "--task", "text-generation-with-past",
                     str(theirs)], theirs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="124M,1.5B")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--optimum", type=Path, default=ROOT / ".venv-optimum/bin/python")
    parser.add_argument("--tools", default="gpt2port,optimum",
                        help="which exports to run (optimum's needs the whole model in memory)")
    args = parser.parse_args()
    rows = []
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            source = write_checkpoint(work / "source", size)
            best = {}
            for _ in range(args.rounds):
                for name, (command, output) in commands(source, work, args.optimum).items():
                    if name not in args.tools.split(","):
                        continue
                    shutil.rmtree(output, ignore_errors=True)
                    seconds, peak, status, said = measured(command)
                    written = size_of(output) if output.exists() else 0
                    shutil.rmtree(output, ignore_errors=True)
                    if status != 0:
                        best.setdefault(name, (None, None, 0, (f"exit {status}: "
                                                              f"{said.strip()[-200:]}")))
                        continue
                    seconds_before = best.get(name, (None,))[0]
                    if seconds_before is None or seconds < seconds_before:
                        best[name] = (seconds, peak, written, "")
            rows.append((size, best))
            print(size, best, flush=True)
    print("\n| size | gpt2port time | gpt2port peak | optimum time | optimum peak | time ratio "
          "| memory ratio |\n|---|---|---|---|---|---|---|")
    for size, best in rows:
        missing = (None, None, 0, "not run")
        ours, theirs = best.get("gpt2port", missing), best.get("optimum", missing)

        def cell(found):
            if found[0] is None:
                return f"failed ({found[3]})", "-"
            return f"{found[0]:.1f} s", f"{found[1] / GIB:.2f} GiB"

        ratio = ("-", "-") if None in (ours[0], theirs[0]) else (
            f"{ours[0] / theirs[0]:.2f}", f"{ours[1] / theirs[1]:.2f}")
        print(f"| {size} | {' | '.join(cell(ours))} | {' | '.join(cell(theirs))} | "
              f"{ratio[0]} | {ratio[1]} |")


if __name__ == "__main__":
    main()
