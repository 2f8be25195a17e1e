"""What both console scripts share: one-line errors for flags and config files.

absl's parser reports a bad ``--config`` (missing file, a syntax error in it, no
``get_config``, an override of a key the config lacks) as a traceback; these helpers turn
each into one line that names the flag or the file and the fix, then exit with status 2.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from absl import flags


def error(prog: str, message: str) -> int:
    """Prints ``<prog>: error: <message>`` (one line) to stderr; returns the exit status, 2."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def fail(prog: str, message: str) -> None:
    """:func:`error`, then exits with its status."""
    sys.exit(error(prog, message))


def _config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv[1:], start=1):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def check_config_file(prog: str, argv: list[str], required: bool = True) -> str | None:
    """Refuses a missing --config (when ``required``) or config file in one line; returns
    the file's absolute path, or None when no --config is given or help is asked for."""
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        return None
    arg = _config_arg(argv)
    if arg is None:
        if required:
            fail(prog, "--config is required, e.g. --config=configs/digits.py:runlocal.")
        return None
    path = arg.split(":", 1)[0]
    if not path:
        fail(prog, f"--config={arg}: no file named; e.g. --config=configs/digits.py:runlocal.")
    if not os.path.isfile(path):
        fail(prog, f"--config={arg}: no config file at {path!r} (paths are relative to the "
             "current directory; the configs are in the repository's configs/).")
    return os.path.abspath(path)


def in_config_file(e: BaseException, path: str | None) -> str | None:
    """``'<file>, line N: Type: message'`` if ``e`` was raised by the config file itself."""
    if isinstance(e, SyntaxError) and e.filename and path and \
            os.path.abspath(e.filename) == path:
        return f"{path}, line {e.lineno}: SyntaxError: {e.msg}"
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if path and os.path.abspath(f.filename) == path]
    if frames:
        return f"{path}, line {frames[-1].lineno}: {type(e).__name__}: {e}"
    if isinstance(e, AttributeError) and "get_config" in str(e):
        return (f"{path} has no get_config(arg) function: a config file returns its "
                "ConfigDict from get_config (see configs/digits.py)")
    return None


def flags_parser(prog: str, config_required: bool = True) -> Callable[[list[str]], list[str]]:
    """An ``app.run(..., flags_parser=)`` for ``prog``: absl's parser, with flag and config
    errors reported in one line instead of a traceback."""

    def parse(argv: list[str]) -> list[str]:
        path = check_config_file(prog, argv, required=config_required)
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            text = str(e).strip()
            if "Traceback" in text:  # an exception inside the config file's get_config
                text = f"{text.splitlines()[0]} {text.splitlines()[-1]}"
            if isinstance(e, flags.UnrecognizedFlagError) and "config." in text:
                text += " (not a key of this config; see the config file or nlnoise.config)"
            fail(prog, text)
            raise  # unreachable
        except Exception as e:
            where = in_config_file(e, path)
            if where:
                fail(prog, f"--config: {where}")
            # config_flags applying --config.a.b=value to a key the config lacks, or a bad value.
            overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
            detail = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split()).strip("'\"")
            fail(prog, f"{overrides}: {type(e).__name__}: {detail}")
            raise

    return parse
