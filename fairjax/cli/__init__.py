"""fairjax's command-line programs, one module each (`fairjax/cli/<name>.py`: its absl flags and
`main`; no library module defines flags), and the helpers they share (this module).

Each program runs as `python -m fairjax.<name>` (the entry point: `fairjax/<name>.py`'s
`__main__` block, or a package's `__main__.py`, hands over to `fairjax.cli.<name>.start`) or as
`python -m fairjax.cli.<name>`: train, evaluate, convert, score, rate, rewrite, rest, serve, bench.

`run(main)` replaces `absl.app.run(main)`:
* third-party INFO logs stay quiet (absl verbosity WARNING unless `--verbosity`/`-v` is given; the
  transformers advisory banner is switched off in `fairjax/__init__.py`);
* a user mistake prints ONE line `error: ...` on stderr and exits with status 2 instead of a
  traceback: fairjax's own error types (all `ValueError` subclasses raised by fairjax code:
  DataError, ConfigError, CheckpointMismatchError, VocabMismatchError, PoolFormatError, ...,
  whose messages name the file/line or key and the fix), a missing or existing file, and a bad
  `--config.*` override (named as the full flag, with ml_collections' suggestion, e.g.
  `--config.optim.lrr=1` -> did you mean `--config.optim.lr`).
`FAIRJAX_TRACEBACK=1` re-raises instead, for debugging.
"""
from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

from fairjax.io.torch_pickle import UnsafePickleError

EXIT_USER_ERROR = 2
_PKG_DIR = str(Path(__file__).resolve().parents[1])  # fairjax/
_FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError)


def _raised_by_fairjax(e: BaseException) -> bool:
    """True when the innermost frame of `e`'s traceback is fairjax code (its message is ours)."""
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(_PKG_DIR)


def is_user_error(e: BaseException) -> bool:
    """fairjax's own error types and file errors; a ValueError from library internals
    (numpy, jax) is a bug and keeps its traceback."""
    if isinstance(e, (_FILE_ERRORS, UnsafePickleError)):
        return True
    return isinstance(e, ValueError) and (type(e).__module__.startswith("fairjax")
                                          or _raised_by_fairjax(e))


def format_error(e: BaseException) -> str:
    """`error: <message>` for a user error (file errors: `<what>: <path>`)."""
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in str(e.args[-1]):
        msg = f"{e.strerror or type(e).__name__}: {e.filename}"
    else:
        msg = str(e) if len(e.args) != 1 or not isinstance(e.args[0], str) else e.args[0]
    return f"error: {msg.strip()}"


_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"\?')


def config_override_error(e: BaseException, argv: Sequence[str]) -> Optional[str]:
    """The `error: ...` line for a `--config.*` override that ml_collections rejected while flags
    were parsed (unknown key, wrong type), naming the full flag; None if `e` is something else."""
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    if not overrides:
        return None
    text = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    first = text.splitlines()[0].strip().strip("'\"") if text else ""
    m = _DID_YOU_MEAN.search(text)
    bad = m.group(2) if m else first
    for flag in overrides:
        parts = flag[len("--config."):].split(".")
        if bad in parts:
            if m:
                fixed = "--config." + ".".join(m.group(1) if p == bad else p for p in parts)
                return f"error: {flag}: the config has no key {bad!r}; did you mean {fixed}?"
            return f"error: {flag}: the config has no key {bad!r} (see the config file's keys)"
    if isinstance(e, (KeyError, AttributeError)):
        return None
    return f"error: bad --config override ({', '.join(overrides)}): {first or type(e).__name__}"


def quiet_logs(verbose: bool = False) -> None:
    """absl (JAX/Orbax) logging at WARNING unless `verbose`, `--verbosity` or a CLI's own
    `--verbose` flag (fairjax.train) asks for INFO; call inside main (after flags)."""
    from absl import flags
    from absl import logging as absl_logging

    explicit = "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
    wants_info = "verbose" in flags.FLAGS and bool(flags.FLAGS["verbose"].value)  # train's --verbose
    if verbose or explicit or wants_info:
        return
    absl_logging.set_verbosity(absl_logging.WARNING)


def set_usage(doc: Optional[str]) -> None:
    """Make `doc` (the program module's docstring) the text of `--help`: absl prints the
    docstring of `__main__`, which is the entry-point module that handed over to the program."""
    main_module = sys.modules.get("__main__")
    if doc and main_module is not None:
        main_module.__doc__ = doc


def run(main: Callable[[list[str]], Optional[int]], argv: Optional[Sequence[str]] = None,
        doc: Optional[str] = None) -> None:
    """`absl.app.run(main)` with quiet logs and one-line user errors (exit status 2); `doc`: the
    program's usage text (`set_usage`)."""
    from absl import app

    set_usage(doc)
    argv = list(sys.argv if argv is None else argv)
    debug = os.environ.get("FAIRJAX_TRACEBACK", "") not in ("", "0")

    def wrapped(args):
        quiet_logs()
        try:
            return main(args)
        except Exception as e:  # noqa: BLE001 - user errors become one line, the rest re-raise
            if debug or not is_user_error(e):
                raise
            print(format_error(e), file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    app.run(wrapped, argv=argv, flags_parser=_parse_flags if not debug else _absl_parse)


def program(define_flags: Callable[[], None], main: Callable[[list[str]], Optional[int]],
            doc: Optional[str] = None) -> Callable[..., None]:
    """The `start(argv=None)` of a program module: define its flags, then `run(main)` with `doc`
    as the `--help` text."""
    def start(argv: Optional[Sequence[str]] = None) -> None:
        define_flags()
        run(main, argv, doc=doc)

    return start


def _absl_parse(args: list[str]) -> list[str]:
    from absl import app

    return app.parse_flags_with_usage(args)


def _parse_flags(args: list[str]) -> list[str]:
    """absl's flag parsing, but a bad flag or `--config.*` override ends in one `error:` line with
    exit status 2 instead of absl's FATAL block or an ml_collections traceback."""
    from absl import flags

    try:
        rest = flags.FLAGS(args)
    except flags.Error as e:
        msg = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
        print(f"error: {msg} (--helpfull lists the flags)", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    except (KeyError, AttributeError, ValueError, TypeError) as e:
        line = config_override_error(e, args)
        if line is None:
            raise
        print(line, file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    _check_config_files(flags.FLAGS)
    return rest


def _check_config_files(parsed) -> None:
    """ml_collections defers a config file's load error until the config is first read (a
    traceback deep in main): report it now as `error: --config=FILE: ...`."""
    for name in list(parsed):
        value = parsed[name].value
        if type(value).__name__ != "_ErrorConfig":
            continue
        try:
            getattr(value, "anything")
        except Exception as e:  # noqa: BLE001 - ml_collections raises IOError/OSError here
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            filename = getattr(parsed[name], "config_filename", "")
            print(f"error: --{name}={filename}: cannot load the config file "
                  f"({lines[-1] if lines else type(e).__name__})", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
