"""Shared command-line plumbing: known user errors become one clear line on stderr and exit code 2."""
from __future__ import annotations

import sys

from pipeline.checkpoint import CheckpointError
from pipeline.config import ConfigError
from pipeline.official import OfficialImportError
from pipeline.tasks import DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError, OfficialImportError)


def run(main, argv=None) -> None:
    try:
        code = main(argv)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
