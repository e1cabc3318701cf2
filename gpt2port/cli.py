"""The ``gpt2port`` command: parses, calls the Python API, prints. Errors end in their exit code."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Self

from .config import PRESETS, hub_source
from .console.phases import phase
from .errors import ConfigError, Gpt2portError, OfflineError, TokenizerError, VerificationError

EXAMPLES = """\
examples:
  gpt2port download                       # openai-community/gpt2 at its pinned commit
  gpt2port download gpt2-medium --output ./gpt2-medium
  gpt2port download 124M --source openai   # OpenAI's original TF checkpoint
  gpt2port download someone/gpt2-finetune --revision main
  gpt2port verify gpt2 --reference numpy
  gpt2port generate gpt2 "The dog" --max-new-tokens 30 --temperature 0.8 --top-k 40 --seed 1
  gpt2port convert gpt2 ./gpt2-hf --to hf --dtype f16
  gpt2port inspect ./my-checkpoint-folder

exit codes: 0 ok, 2 usage, 3 config, 4 checkpoint, 5 tokenizer, 6 verification failed,
  7 output cannot be written, 10 download, 11 offline and not cached, 12 not found,
  13 access denied, 14 network, 15 integrity (hash or size), 16 disk full, 70 a bug in gpt2port,
  130 interrupted (Ctrl-C), 141 output pipe closed, 143 terminated (SIGTERM)
"""


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, ``timeout``, a container stopping): unwinds like Ctrl-C, so
    partial outputs are removed."""


class Parser(argparse.ArgumentParser):
    """argparse with gpt2port's error shape: ``error:`` and ``hint:`` lines, exit code 2."""

    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        print(f"error: {message}\nhint: {self.prog} --help lists the arguments",
              file=sys.stderr)
        raise SystemExit(2)


class Version(argparse.Action):
    """``--version``, looked up only when asked for (importlib.metadata costs ~30 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib.metadata import version

        print(f"gpt2port {version('gpt2port')}")
        parser.exit()


def _number(kind: type, *, least: float, most: float = math.inf, above: bool = False,
            what: str) -> object:
    """An argparse type: a ``kind`` number from ``least`` (exclusive when ``above``) to
    ``most``."""
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (least < value if above else least <= value) or not value <= most:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


COUNT = _number(int, least=0, what="a whole number of 0 or more")
POSITIVE = _number(int, least=1, what="a whole number of 1 or more")
SEED = _number(int, least=0, most=2**63 - 1, what="a whole number from 0 to 2**63 - 1")
TEMPERATURE = _number(float, least=0, most=1e6, what="a number of 0 (greedy) or more")
PROBABILITY = _number(float, least=0, most=1, above=True, what="a number in (0, 1]")


def _source_options(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    parser.add_argument("model", nargs="?" if default else None, default=default,
                        help=f"a preset ({', '.join(PRESETS)}), a Hub repo id, or a local "
                        "folder or file" + (f" (default: {default})" if default else ""))
    parser.add_argument("--revision", help="branch, tag or commit (presets pin a commit)")
    parser.add_argument("--cache-dir", type=Path, help="huggingface_hub cache folder")
    parser.add_argument("--offline", action="store_true", help="use the cache only")
    parser.add_argument("--file", dest="filename", metavar="NAME",
                        help="one weights file of a Hub repo (a .pth, .safetensors, .gguf, "
                        "ckpt.pt...), fetched with the config and tokenizer files beside it")
    parser.add_argument("--base", metavar="PATH|REPO",
                        help="for a LoRA adapter: the base model to merge it onto, where not "
                        "the one its adapter_config.json names")
    _tokenizer_option(parser)


def _tokenizer_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", metavar="PATH|REPO|gpt2",
                        help="the model's tokenizer, where the checkpoint has none of its own "
                        "(a folder, a checkpoint, a Hub repo, or gpt2 for GPT-2's)")


def _parser() -> argparse.ArgumentParser:
    from .formats import BY_NAME, FORMATS  # imports torch: inside main's handling of Ctrl-C

    parser = Parser(
        prog="gpt2port", description="The open GPT-2 weights in a from-scratch model, verified.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=Version, nargs=0, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    download = commands.add_parser("download", help="fetch, check, load and verify a model",
                                   epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _source_options(download, default="gpt2")
    download.add_argument("--source", choices=("hub", "openai"), default="hub",
                          help="the Hugging Face Hub, or OpenAI's storage of the original TF "
                          "checkpoints (model: a size 124M/355M/774M/1558M or a preset)")
    download.add_argument("--output", type=Path, help="also write the verified model here in "
                          "gpt2port's own layout (model.safetensors + tokenizer files)")
    download.add_argument("--force", action="store_true",
                          help="download afresh, even what is cached")
    download.add_argument("--reference", choices=("auto", "transformers", "numpy"),
                          default="auto", help="what to verify against (auto: transformers "
                          "when installed, else the NumPy reference)")

    verify = commands.add_parser("verify", help="compare a model's logits with a reference")
    _source_options(verify)
    verify.add_argument("--reference", choices=("auto", "transformers", "numpy", "onnxruntime"),
                        default="auto", help="auto: onnxruntime for an ONNX export, "
                        "transformers for a Hugging Face folder (each where installed), else "
                        "the NumPy reference")
    verify.add_argument("--text", type=Path, help="also compare the logits over this UTF-8 "
                        "text file, in windows of the context length")

    generate = commands.add_parser("generate", help="continue a prompt, printing as it goes")
    _source_options(generate)
    generate.add_argument("prompt", help="the text to continue (empty: from <|endoftext|>)")
    generate.add_argument("--max-new-tokens", type=COUNT, default=50,
                          help="past the context length the window slides (default: 50)")
    generate.add_argument("--temperature", type=TEMPERATURE, default=0.0, help="0 means greedy")
    generate.add_argument("--top-k", type=POSITIVE, help="sample among the k likeliest")
    generate.add_argument("--top-p", type=PROBABILITY, help="sample in the nucleus of mass p")
    generate.add_argument("--seed", type=SEED)
    generate.add_argument("--stop-at-eos", action="store_true",
                          help="stop at <|endoftext|> instead of going on to --max-new-tokens")
    generate.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    generate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    generate.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                          help="each token by the compiled step (CPU; built with the "
                          "machine's C compiler on first use, then cached): by default where "
                          "it applies; --compile insists, --no-compile never")

    convert = commands.add_parser("convert", help="write a checkpoint in another format")
    _source_options(convert)
    convert.add_argument("destination", type=Path, help="a new folder (written only when done)")
    convert.add_argument("--to", required=True, choices=list(BY_NAME),
                         help="; ".join(f"{f.name}: {f.title}" for f in FORMATS))
    convert.add_argument("--dtype", choices=list(dict.fromkeys(d for f in FORMATS
                                                               for d in f.dtypes)),
                         help="default: the source's own; " + "; ".join(
                             f"{f.name}: {'/'.join(f.dtypes)}" for f in FORMATS))
    convert.add_argument("--approximate-gelu", action="store_true",
                         help="write a model computing the exact GELU (nanoGPT's) to a format "
                         "that knows only GPT-2's tanh GELU; the logit change is reported")

    inspect = commands.add_parser("inspect", help="list the checkpoint's tensors and mapping")
    _source_options(inspect)

    compare = commands.add_parser("compare", help="do two checkpoints hold the same model?")
    compare.add_argument("model", help="the first checkpoint (preset, Hub repo id, folder, file)")
    compare.add_argument("other", help="the second checkpoint")
    compare.add_argument("--revision", help="branch, tag or commit of the first")
    compare.add_argument("--file", dest="filename", metavar="NAME",
                         help="one weights file of the first's Hub repo")
    compare.add_argument("--other-revision", help="branch, tag or commit of the second")
    compare.add_argument("--other-file", dest="other_filename", metavar="NAME",
                         help="one weights file of the second's Hub repo")
    compare.add_argument("--base", metavar="PATH|REPO",
                         help="the first's base model, where it is a LoRA adapter")
    compare.add_argument("--other-base", metavar="PATH|REPO",
                         help="the second's base model, where it is a LoRA adapter")
    compare.add_argument("--cache-dir", type=Path, help="huggingface_hub cache folder")
    compare.add_argument("--offline", action="store_true", help="use the cache only")
    compare.add_argument("--text", type=Path, help="a UTF-8 text file to compare the logits "
                         "over (default: a short text shipped with gpt2port)")
    compare.add_argument("--json", action="store_true", help="print one JSON object")
    _tokenizer_option(compare)
    return parser


def _folder(args: argparse.Namespace) -> Path:
    from .loading import resolve

    phase("resolving")
    return resolve(args.model, revision=args.revision, cache_dir=args.cache_dir,
                   offline=args.offline, filename=args.filename)


def _verified(args: argparse.Namespace, result) -> None:
    """Print a verification; a failed one is the command's error."""
    print(result.report())
    if not result.passed:
        raise VerificationError(f"{args.model}: the loaded model disagrees with the reference",
                                hint="report this with the figures above")


def run_download(args: argparse.Namespace) -> None:
    if args.source == "openai":
        if args.filename is not None:
            raise ConfigError("--file picks a file of a Hub repo; OpenAI's release is one "
                              "checkpoint", hint="drop --file, or drop --source openai")
        folder = _download_release(args)
        # the 124M release holds the same weights as the gpt2 preset
        known = PRESETS["gpt2"].known_greedy if folder.name == "124M" else None
        print(f"files in {folder} (sizes checked; tensors' CRC-32C checked on reading):")
    else:
        from .hub.snapshots import download
        from .loading import hub_name

        if Path(args.model).exists():
            raise ConfigError(f"{args.model}: a local path; download fetches from the Hub",
                              hint=f"gpt2port verify {args.model} checks a local checkpoint")
        source = hub_source(hub_name(args.model), args.revision)
        named = args.filename is not None
        folder = download(source.repo_id, revision=source.revision, cache_dir=args.cache_dir,
                          force=args.force, offline=args.offline, filename=args.filename,
                          pinned={} if named else source.pinned)
        known = None if named else source.known_greedy
        print(f"files in {folder.parent if named else folder} (each checked against the Hub's "
              "size and hash):")
    listed = folder.parent if folder.is_file() else folder
    for path in sorted(p for p in listed.iterdir() if not p.name.startswith(".")):
        print(f"  {path.name:32} {path.stat().st_size:>14,} bytes")
    from .loading import model_from_checkpoint, open_checkpoint
    from .proof.verification import verify_model

    phase("loading")
    checkpoint = open_checkpoint(folder, base=args.base, cache_dir=args.cache_dir,
                                 offline=args.offline)
    model = model_from_checkpoint(checkpoint, dtype="float32")
    _verified(args, verify_model(model, folder, reference=args.reference, known_greedy=known,
                                 tokenizer=_named_tokenizer(args), adapter=checkpoint.adapter))
    if args.output is not None:
        from .conversion import convert

        written = convert(folder, args.output, to="native", base=args.base,
                          cache_dir=args.cache_dir, offline=args.offline)
        print(f"wrote {written} (gpt2port's own layout; load it with load_pretrained)")


def _named_tokenizer(args: argparse.Namespace):
    """The tokenizer ``--tokenizer`` names, or None."""
    from .loading import load_tokenizer

    if args.tokenizer is None:
        return None
    return load_tokenizer(args.tokenizer, cache_dir=args.cache_dir, offline=args.offline)


def _download_release(args: argparse.Namespace) -> Path:
    from .formats.openai import PRESET_SIZES, RELEASE_FILES
    from .hub.releases import default_folder, download_release

    size = PRESET_SIZES.get(args.model, args.model)
    folder = args.cache_dir / "openai" / size if args.cache_dir else default_folder(size)
    if not args.offline:
        return download_release(size, folder=folder, force=args.force)
    missing = [name for name in RELEASE_FILES if not (folder / name).is_file()]
    if missing:
        raise OfflineError(f"{folder}: OpenAI's {size} release is not downloaded "
                           f"(missing {', '.join(missing)})", hint="run once without --offline")
    return folder


def run_verify(args: argparse.Namespace) -> None:
    from .proof.verification import verify

    phase("resolving")
    text = _text(args.text) if args.text else None
    _verified(args, verify(args.model, revision=args.revision, filename=args.filename,
                           cache_dir=args.cache_dir, offline=args.offline,
                           reference=args.reference, text=text,
                           tokenizer=_named_tokenizer(args), base=args.base))


def run_generate(args: argparse.Namespace) -> None:
    import torch

    from .engine.arguments import check_model
    from .engine.generation import stream
    from .loading import (
        checkpoint_tokenizer,
        model_from_checkpoint,
        open_checkpoint,
        parse_device,
        parse_dtype,
    )

    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    folder = _folder(args)
    phase("loading")
    checkpoint = open_checkpoint(folder, base=args.base, cache_dir=args.cache_dir,
                                 offline=args.offline)
    model = check_model(model_from_checkpoint(checkpoint, dtype=dtype, device=device))
    tokenizer = checkpoint_tokenizer(checkpoint, tokenizer=_named_tokenizer(args))
    if tokenizer is None:
        raise TokenizerError(f"{args.model}: no tokenizer, and its vocabulary "
                             f"({checkpoint.config['vocab_size']} tokens) is not GPT-2's: the "
                             "prompt cannot be turned into its ids",
                             hint="pass its tokenizer with --tokenizer PATH|REPO, or generate "
                             "from ids in Python (gpt2port.generate)")
    # an empty prompt starts from the start token (GPT-2's <|endoftext|>), as GPT-2's
    # unconditional samples do
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (
        tokenizer.eos_token_id)
    prompt = tokenizer.encode(args.prompt) or ([start] if start is not None else [])
    if not prompt:
        raise TokenizerError("an empty prompt, and the tokenizer has no start token to begin "
                             "from", hint="give a prompt")
    vocabulary = model.config["vocab_size"]
    if max(prompt) >= vocabulary:
        raise TokenizerError(f"the prompt encodes to id {max(prompt)}, but {args.model} has a "
                             f"vocabulary of {vocabulary}",
                             hint="pass the model's own tokenizer with --tokenizer PATH|REPO")
    ids = torch.tensor([prompt], device=device)
    tokens = stream(model, ids, args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                    stop_at_eos=args.stop_at_eos, compile=args.compile)  # refuses a model
    # compile cannot run here, before any id
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    began, produced, shown = time.perf_counter(), [], Continued(tokenizer, prompt)
    phase("generating")
    for token in tokens:
        produced.append(int(token[0, 0]))
        sys.stdout.write(shown.text(produced))
        sys.stdout.flush()
    sys.stdout.write(shown.text(produced, final=True) + "\n")
    sys.stdout.flush()
    seconds = time.perf_counter() - began
    rate = f"{len(produced) / seconds:.1f} tokens/s" if produced else "no tokens asked for"
    print(f"[{ids.shape[1]} prompt tokens, {len(produced)} new tokens, {rate} on {device}]",
          file=sys.stderr)


class Continued:
    """The text a generation adds to its prompt, as it grows: decoded with the prompt (a word's
    leading space, a lowercased prompt), given out as whole characters."""

    def __init__(self, tokenizer, prompt: list[int]):
        self.tokenizer, self.prompt = tokenizer, prompt
        self.before, self.given = tokenizer.decode(prompt), 0

    def text(self, produced: list[int], *, final: bool = False) -> str:
        """What is new since the last call; an unfinished character waits unless ``final``."""
        added = self.tokenizer.decode(self.prompt + produced)[len(self.before):]
        if not final:
            added = added.rstrip("\ufffd")  # the bytes of a character still coming
        new, self.given = added[self.given:], max(self.given, len(added))
        return new


def run_convert(args: argparse.Namespace) -> None:
    from .conversion import ConversionWarning, convert

    with warnings.catch_warnings(record=True) as changes:
        warnings.simplefilter("always", ConversionWarning)
        written = convert(args.model, args.destination, to=args.to, dtype=args.dtype,
                          revision=args.revision, filename=args.filename,
                          cache_dir=args.cache_dir, offline=args.offline,
                          approximate_gelu=args.approximate_gelu,
                          tokenizer=_named_tokenizer(args), base=args.base)
    for change in changes:
        if issubclass(change.category, ConversionWarning):
            print(f"note: {change.message}", file=sys.stderr)
    if written.is_dir():
        print(f"wrote {written} ({args.to}): "
              + ", ".join(sorted(p.name for p in written.iterdir())))
    else:
        print(f"wrote {written} ({args.to}, {written.stat().st_size:,} bytes)")


def run_inspect(args: argparse.Namespace) -> None:
    from .inspection import inspect

    phase("resolving")
    print(inspect(args.model, revision=args.revision, filename=args.filename,
                  cache_dir=args.cache_dir, offline=args.offline,
                  tokenizer=_named_tokenizer(args), base=args.base))


def _text(path: Path) -> str:
    """The text of ``--text``.

    Raises:
        ConfigError: for a file that cannot be read as UTF-8.
    """
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--text {path}: cannot be read as UTF-8 text "
                          f"({getattr(error, 'strerror', None) or error})",
                          hint="give a UTF-8 text file") from None


def run_compare(args: argparse.Namespace) -> None:
    from .proof.comparison import compare

    text = _text(args.text) if args.text else None
    found = compare(args.model, args.other, text=text, revision=args.revision,
                    filename=args.filename, other_revision=args.other_revision,
                    other_filename=args.other_filename, cache_dir=args.cache_dir,
                    offline=args.offline, tokenizer=_named_tokenizer(args), base=args.base,
                    other_base=args.other_base)
    print(found.to_json() if args.json else found.report())
    if found.verdict == "different":
        raise VerificationError(f"{args.model} and {args.other} hold different models",
                                hint="the figures above say what differs and where")


COMMANDS = {"download": run_download, "verify": run_verify, "generate": run_generate,
            "convert": run_convert, "inspect": run_inspect, "compare": run_compare}


class Signals:
    """Ctrl-C and SIGTERM for the command's process: each unwinds the command as an exception
    (so partial outputs are removed), except while torch imports, where an exception raised
    inside its C++ callbacks aborts the process: there the signal waits until the import is
    done. Every signal is remembered, so an error a library makes of one (a download cut off)
    is still reported as the interruption it was."""

    def __init__(self):
        self.deferring, self.received = False, []

    def __enter__(self) -> Self:
        self.previous = {number: signal.signal(number, self.arrived)
                         for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def arrived(self, number: int, frame: object) -> None:
        self.received.append(number)
        if not self.deferring:
            self.raise_for(number)

    @staticmethod
    def raise_for(number: int) -> None:
        raise KeyboardInterrupt if number == signal.SIGINT else Terminated

    def import_torch(self) -> None:
        """Import torch (and what the parser lists) with signals held until it is done."""
        self.deferring = True
        try:
            phase("importing")
            from . import formats  # noqa: F401 - imports torch
        finally:
            self.deferring = False
        if self.received:
            self.raise_for(self.received[0])


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit code. Nothing but gpt2port's own lines reaches stderr."""
    with Signals() as signals:
        try:
            signals.import_torch()
            return _run(argv, signals)
        except KeyboardInterrupt:
            return _stopped(signal.SIGINT)
        except Terminated:
            return _stopped(signal.SIGTERM)
        except BrokenPipeError:
            # the reader went away (``| head``): stop quietly, as command-line tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141


def _stopped(number: int) -> int:
    """Say how the command was stopped; the shell's exit status for that signal."""
    print("interrupted" if number == signal.SIGINT else "terminated", file=sys.stderr)
    return 130 if number == signal.SIGINT else 143


def _run(argv: list[str] | None, signals: Signals) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except BrokenPipeError:
        raise  # the reader went away: main stops quietly
    except Exception as error:  # noqa: BLE001 - every error ends in one line and an exit code
        if signals.received:  # an error a library made of the signal (a download cut off)
            return _stopped(signals.received[0])
        return _report(error)
    return 0


def _report(error: Exception) -> int:
    """Say what went wrong in one ``error:`` and one ``hint:`` line; its exit code."""
    if isinstance(error, Gpt2portError):
        _say(error.message, error.hint)
        return error.exit_code
    if isinstance(error, OSError):  # a path the commands did not check: unreadable, vanished...
        where = f"{error.filename}: " if error.filename else ""
        _say(f"{where}{error.strerror or error}", "check the path and its permissions")
        return 4
    # the last resort: a bug, said in one line
    _say(f"internal error: {type(error).__name__}: {error}",
         "this is a bug in gpt2port; please report it with the command you ran "
         "(GPT2PORT_TRACEBACK=1 prints the traceback)")
    if os.environ.get("GPT2PORT_TRACEBACK"):
        raise error
    return 70


def _say(message: str, hint: str | None) -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def console_script() -> None:
    sys.exit(main())
