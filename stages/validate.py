"""Check a submission file against its challenges file.

    python -m stages.validate --challenges FILE --submission FILE

Exit 0 when valid; otherwise exit 2 with one line per problem."""
from __future__ import annotations

import argparse
import sys

from pipeline.data.tasks import read_json, read_task_map
from stages._cli import run
from submission.format import submission_problems


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--challenges", required=True)
    p.add_argument("--submission", required=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    problems = submission_problems(read_task_map(args.challenges), read_json(args.submission))
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 2
    print("submission is valid")
    return 0


if __name__ == "__main__":
    run(main)
