"""Shared command-line plumbing: known user errors become one clear line on stderr and exit code 2, and the
argument types the stages share. Importing it imports nothing heavy (no torch), so a stage can report an
error before its heavy imports (stages.submit writes its fallback submission first)."""
from __future__ import annotations

import argparse
import sys


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input, not a bug (imported here, when needed: they pull in torch)."""
    from pipeline.layout import CheckpointError
    from pipeline.config import ConfigError
    from pipeline.nn.official import OfficialImportError
    from pipeline.data.tasks import DataError

    return (ConfigError, DataError, CheckpointError, OfficialImportError)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def fail(e: Exception) -> None:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run(main, argv=None) -> None:
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if isinstance(e, user_errors()):
            fail(e)
        raise
    sys.exit(code or 0)
