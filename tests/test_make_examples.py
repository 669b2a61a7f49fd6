"""Every `make` line of the README runs as written: expanded by `make -n` into the commands it runs, whose
modules exist and whose arguments parse as the stage parses them (torchrun's with torchrun's parser, a
`--config` with its `--set` overrides loaded as the run would load them); one runs for real (two steps).

`-o .venv/.installed` keeps make from reinstalling: the tests use the environment that is already there."""
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

STAMP = ".venv/.installed"  # the Makefile's $(VENV)/.installed with VENV=.venv


def readme_make_lines() -> list[str]:
    """`make ...` lines inside the README's ```bash blocks, comments dropped."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "make":
                lines.append(shlex.join(words))
    return lines


def dry_run(words: list[str]) -> list[list[str]]:
    """The commands `make` would run for `make WORDS...`, split into words."""
    r = subprocess.run(["make", "-n", "-s", "-o", STAMP, *words[1:]], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"{shlex.join(words)}: {r.stderr}"
    return [shlex.split(c) for c in r.stdout.replace("\\\n", " ").splitlines() if c.strip()]


def check_command(cmd: list[str], where: str) -> None:
    """The command's program exists and its arguments parse the way the program will parse them."""
    prog = cmd[0]
    if prog == "bash":
        assert (ROOT / cmd[1]).is_file(), f"{where}: {cmd[1]} does not exist"
        return
    assert prog.startswith(".venv/bin/"), f"{where}: runs {prog}, not from VENV=.venv"
    assert "-m" in cmd, f"{where}: expected `-m MODULE` in {cmd}"
    m = cmd.index("-m")
    if prog.endswith("torchrun"):
        from torch.distributed.run import get_args_parser

        targs = get_args_parser().parse_args(cmd[1:])
        assert targs.module and targs.training_script == cmd[m + 1], where
        assert int(targs.nproc_per_node) >= 1 and targs.nnodes, where
    module, args = cmd[m + 1], cmd[m + 2:]
    assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
    if module.startswith("stages."):
        mod = importlib.import_module(module)
        if hasattr(mod, "parse_args"):
            mod.parse_args(args)  # argparse exits (SystemExit 2) on unrecognised arguments
    if "--config" in args:
        from pipeline.config import load_config

        after = args[args.index("--config") + 1:]
        configs = after[:next((i for i, a in enumerate(after) if a.startswith("--")), len(after))]  # applied in order
        for config in configs:
            assert (ROOT / config).is_file(), f"{where}: no config {config}"
        sets = args[args.index("--set") + 1:] if "--set" in args else []
        load_config([ROOT / c for c in configs], [s for s in sets if "=" in s])  # unknown keys / wrong types raise


def test_the_readme_has_make_examples():
    lines = readme_make_lines()
    assert {"make demo", "make test", "make bench"} <= set(lines)
    assert any("NPROC=4" in line and "SET=" in line for line in lines)


@pytest.mark.parametrize("line", readme_make_lines())
def test_every_readme_make_line_expands_into_commands_that_parse(line):
    words = shlex.split(line)
    commands = dry_run(words)
    assert commands, f"{line}: runs nothing"
    for cmd in commands:
        if cmd[0] in ("test", "touch"):
            continue
        check_command(cmd, line)
    if any(w.startswith("SET=") for w in words):
        setting = next(w for w in words if w.startswith("SET="))[4:].split()
        run = next(c for c in commands if "stages.pretrain" in c)
        assert run[run.index("--set") + 1:] == setting, f"{line}: overrides not passed as --set"


def test_set_accepts_overrides_with_or_without_a_leading_set():
    plain = dry_run(["make", "pretrain", "SET=train.steps=2 train.global_batch=4"])
    legacy = dry_run(["make", "pretrain", "SET=--set train.steps=2 train.global_batch=4"])
    assert plain == legacy
    assert plain[-1][-3:] == ["--set", "train.steps=2", "train.global_batch=4"]
    assert "--set" not in dry_run(["make", "pretrain"])[-1]


def test_the_overrides_example_really_trains(tmp_path):
    """The README's single-process pretrain line with SET, run for real (its run folder moved to tmp)."""
    line = next(x for x in readme_make_lines() if x.startswith("make pretrain") and "demo_cpu" in x and "SET=" in x)
    words = shlex.split(line)
    words = [w + f" run_dir={tmp_path} train.progress=false" if w.startswith("SET=") else w for w in words]
    r = subprocess.run(["make", "-s", "-o", STAMP, *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "ckpt" / "step-00000002" / "meta.json").exists()
