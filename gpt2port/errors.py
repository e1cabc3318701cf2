"""The package's own error types; each carries a hint a person can act on and a CLI exit code."""

from __future__ import annotations


class Gpt2portError(Exception):
    """Base class of every error gpt2port raises on purpose."""

    exit_code = 1
    default_hint = "see docs/errors.md"  # when the raiser has nothing more specific to say

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class ConfigError(Gpt2portError):
    """A model config that cannot work: unknown keys, bad sizes, unsupported options."""

    exit_code = 3
    default_hint = "fix the value named above (docs/formats.md lists each format's keys)"


class CheckpointError(Gpt2portError):
    """A checkpoint that cannot be read: missing files, malformed headers, refused pickles."""

    exit_code = 4
    default_hint = ("the file is damaged or not a GPT-2 checkpoint: download it again, or see "
                    "docs/formats.md for what each format holds")


class MappingError(CheckpointError):
    """A checkpoint whose tensors do not fit the model: lists every problem at once."""

    def __init__(self, origin: str, problems: list[str], config: dict):
        self.problems = problems
        self.config = config
        listing = "\n".join(f"  - {problem}" for problem in problems)
        assumed = ", ".join(f"{key}={value}" for key, value in config.items())
        super().__init__(
            f"{origin}: {len(problems)} tensor(s) do not fit the model\n{listing}\n"
            f"config assumed: {assumed}",
            hint="check that the checkpoint and its config.json belong together "
            "(a wrong number of layers, heads or vocabulary shows up as the problems above)",
        )


class TokenizerError(Gpt2portError):
    """Tokenizer files that are missing or do not agree with each other."""

    exit_code = 5
    default_hint = "give the model GPT-2's own tokenizer files (vocab.json and merges.txt)"


class VerificationError(Gpt2portError):
    """Our logits or greedy tokens disagree with the reference beyond the stated tolerance."""

    exit_code = 6


class OutputError(Gpt2portError):
    """An output that cannot be written: the destination exists, or its folder is read-only."""

    exit_code = 7


class CompileError(Gpt2portError):
    """The compiled decoding step (``generate(..., compile=True)``) cannot be built or loaded."""

    exit_code = 8
    default_hint = "install a C compiler (gcc or clang; CC= names another), or leave compile off"


class DownloadError(Gpt2portError):
    """Fetching from the Hub failed; the subclasses say why."""

    exit_code = 10


class OfflineError(DownloadError):
    """Offline, and the files are not in the cache."""

    exit_code = 11


class NotFoundError(DownloadError):
    """The repository, revision or file does not exist (or is private and no token was sent)."""

    exit_code = 12


class AccessError(DownloadError):
    """The repository is gated or private and the token does not grant access."""

    exit_code = 13


class NetworkError(DownloadError):
    """The connection failed, dropped, or timed out."""

    exit_code = 14


class IntegrityError(DownloadError):
    """A downloaded file's size or sha256 differs from the Hub's or the pinned one."""

    exit_code = 15


class DiskFullError(DownloadError):
    """The disk (or the file-size limit) ran out while writing."""

    exit_code = 16


def unreadable(path: object, error: Exception, kind: type[Gpt2portError] = CheckpointError
               ) -> Gpt2portError:
    """The error for a file that exists but cannot be read, with what to do about it."""
    hint = ("check the file's permissions: gpt2port needs to read it"
            if isinstance(error, PermissionError) else None)
    return kind(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})", hint=hint)
