"""A quiet console for long jobs: what the user should read on the terminal, everything else in a log file.

    with QuietConsole(Path("outputs/demo/demo.log")):
        say("=== 1/5 preprocess ===")          # the terminal
        print("anything")                       # the log file
        tqdm(..., file=console())               # progress bars on the terminal

Inside the block, file descriptors 1 and 2 of this process point at the log file, so Python's prints,
warnings, logging, Ray's own messages and the lines Ray forwards from its workers (`log_to_driver`)
all land there, whoever writes them. `say` and `console()` write to a duplicate of the terminal's
stdout taken on entry. On exit (normal or not) the descriptors are restored, so a traceback that
leaves the block is printed on the terminal; `tail` of the log is printed with it on failure.
Outside a QuietConsole, `console()` is `sys.stdout` and `say` is `print`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

_console: TextIO | None = None


def console() -> TextIO:
    """The terminal: the stream progress bars and phase lines go to."""
    return _console or sys.stdout


def say(text: str = "") -> None:
    print(text, file=console(), flush=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class QuietConsole:
    """Redirect fds 1/2 to `log_path` (appending) for the block; `enabled=False` changes nothing."""

    def __init__(self, log_path: Path, enabled: bool = True):
        self.log_path, self.enabled = Path(log_path), enabled
        self._saved: tuple[int, int] | None = None

    def __enter__(self) -> QuietConsole:
        global _console
        if not self.enabled:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        _console = os.fdopen(os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        global _console
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = None
        if _console is not None:
            _console.close()
        _console = None
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            print(f"--- the last lines of {self.log_path} ---\n{tail(self.log_path)}\n---", file=sys.stderr, flush=True)
