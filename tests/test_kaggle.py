"""Kaggle packaging (stages.kaggle build/push): the notebook and its datasets, the dry-run upload plan, credentials
never echoed, and the notebook executed with nbclient against a fake Kaggle tree (offline, CPU)."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import nbformat
import pytest

from conftest import ARC, ROOT, built_once, needs_shared_arc, pretrain_20_steps
from pipeline.layout import Checkpoint
from pipeline.data.synthetic import synthetic_tasks
from submission.kaggle import (PLACEHOLDER_OWNER, WEIGHT_FILES, BuildSettings, KaggleError, KaggleNames, build_all,
                               configured_username, credentials_source, push, upload_plan)

SECRET = "kaggle-key-that-must-never-appear-0123456789"
# The kernel-metadata.json keys kaggle 2.2.4's kernels_push reads (kaggle/api/kaggle_api_extended.py).
KERNEL_KEYS = {"id", "id_no", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu", "enable_tpu",
               "enable_internet", "dataset_sources", "competition_sources", "kernel_sources", "model_sources",
               "keywords", "docker_image", "docker_image_pinning_type", "machine_shape"}


def fake_checkpoint(folder: Path) -> Checkpoint:
    """A checkpoint folder's files (contents irrelevant to packaging but for what opening it reads: config,
    task order, meta), resume-only files included."""
    folder.mkdir(parents=True)
    for f in (*WEIGHT_FILES, "optim.pt", "carry_rank0.safetensors", "carry_rank1.safetensors", "state.json"):
        (folder / f).write_bytes(f.encode())
    (folder / "config.yaml").write_text("{}\n")
    (folder / "tasks.json").write_text('{"task_ids": []}')
    (folder / "meta.json").write_text('{"step": 0}')
    return Checkpoint.open(folder)


def clean_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k != "XDG_CONFIG_HOME"}
    return {**env, "HOME": str(home), "OMP_NUM_THREADS": "1", **extra}


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "stages.kaggle", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_build_writes_the_notebook_and_three_kinds_of_dataset(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "run" / "ckpt" / "step-00000020")
    names = KaggleNames(owner="alice", weights="my-weights")
    build_all(tmp_path / "out", [ckpt], BuildSettings(names, budget_s=1234, wheels=False), git="abc")
    out = tmp_path / "out"

    weights = out / "datasets" / "weights"
    assert {p.name for p in weights.iterdir()} == {*WEIGHT_FILES, "LICENSE", "dataset-metadata.json"}
    code = out / "datasets" / "code"
    assert (code / "stages" / "kaggle.py").is_file() and (code / "pipeline" / "data" / "tasks.py").is_file()
    sources = {f.relative_to(ROOT) for f in (ROOT / "pipeline").rglob("*.py")}
    assert sources == {f.relative_to(code) for f in (code / "pipeline").rglob("*.py")}  # every subpackage, every module
    assert (code / "configs" / "demo_cpu.yaml").is_file() and (code / "requirements.txt").is_file()
    assert not (code / "tests").exists() and not (code / "runs").exists() and not (code / ".venv").exists()
    assert not list(code.rglob("__pycache__")) and not list(code.rglob("*.pyc"))
    assert not (out / "datasets" / "wheels").exists()
    for folder, slug in ((code, "trm-arc-code"), (weights, "my-weights")):
        meta = json.loads((folder / "dataset-metadata.json").read_text())
        assert meta["id"] == f"alice/{slug}" and len(meta["licenses"]) == 1 and 6 <= len(meta["title"]) <= 50
        assert (folder / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
        assert "MIT License" in (folder / "LICENSE").read_text()

    kernel = json.loads((out / "notebook" / "kernel-metadata.json").read_text())
    assert set(kernel) <= KERNEL_KEYS
    assert kernel["id"] == "alice/trm-arc-submission" and kernel["kernel_type"] == "notebook"
    assert re.sub(r"[^a-z0-9]+", "-", kernel["title"].lower()) == "trm-arc-submission"  # Kaggle slugifies the title
    assert kernel["enable_gpu"] is True and kernel["enable_internet"] is False
    assert kernel["competition_sources"] == ["arc-prize-2026-arc-agi-2"]
    assert kernel["dataset_sources"] == ["alice/trm-arc-code", "alice/my-weights"]

    nb = nbformat.read(str(out / "notebook" / kernel["code_file"]), as_version=4)
    nbformat.validate(nb)
    code_cells = [c.source for c in nb.cells if c.cell_type == "code"]
    for source in code_cells:
        ast.parse(source)
    namespace = {}
    exec(code_cells[0], namespace)  # the settings cell is plain data
    assert namespace["BUILD"]["budget_s"] == 1234 and namespace["BUILD"]["wheels"] is None
    assert namespace["BUILD"]["submit_args"] == [] and "*BUILD[\"submit_args\"]" in code_cells[-2]
    assert namespace["BUILD"]["weights"] == "alice/my-weights"
    text = "\n".join(code_cells)
    assert "stages.submit" in text and "stages.validate" in text and "torch.distributed.run" in text
    assert "--target" in text and "SITE = SCRATCH / " in text  # wheels go under SCRATCH, never /kaggle/working


def test_build_refuses_bad_slugs_and_incomplete_checkpoints(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "ck")
    with pytest.raises(KaggleError, match="slug"):
        build_all(tmp_path / "out", [ckpt], BuildSettings(KaggleNames(owner="a", code="Bad Slug!"), wheels=False))
    (ckpt.path / "model.safetensors").unlink()
    with pytest.raises(KaggleError, match="model.safetensors"):
        build_all(tmp_path / "out", [ckpt], BuildSettings(KaggleNames(owner="a"), wheels=False))


@pytest.mark.parametrize("text, problem", [
    ("--ttt-confg configs/demo_ttt.yaml", "unrecognized arguments: --ttt-confg"),  # a typo
    ("--views 0", "--views: 0 is not a positive integer"),
    ("'oops", "No closing quotation"),
    ("--budget-s 5", "--budget-s: the notebook sets it itself"),
    ("--budg 5 --out x", "--out, --budget-s: the notebook sets them itself"),  # abbreviated too
    ("--checkpoint x", "--checkpoint: the notebook sets it itself"),
    ("--weights 2 1", "--weights: the notebook sets it itself"),  # stages.kaggle build --weights
    ("--kaggle-root x --device cpu", "--kaggle-root, --device: the notebook sets them itself"),
    ("--ttt-config configs/ttt_nope.yaml", "--ttt-config configs/ttt_nope.yaml: no such file in the code dataset"),
    ("--ttt-config /etc/hostname", "--ttt-config /etc/hostname: no such file in the code dataset"),
    ("--ttt-config configs/demo_ttt.yaml --set train.stepz=3", "unknown config key 'train.stepz'"),
    ("--set train.steps=many", "train.steps"),  # over the default preset, configs/ttt_full.yaml
])
def test_build_checks_the_submit_args_before_writing_anything(tmp_path, text, problem):
    """--submit-args that would fail on Kaggle (no submission.json, a day lost) stop the build with one line,
    exit 2, before anything is written."""
    from stages.kaggle import checked_submit_args

    with pytest.raises(KaggleError, match=re.escape(problem)):
        checked_submit_args(text)
    assert checked_submit_args("--ttt-config configs/demo_ttt.yaml --set train.steps=3 --ttt-steps 2 --views 4") == [
        "--ttt-config", "configs/demo_ttt.yaml", "--set", "train.steps=3", "--ttt-steps", "2", "--views", "4"]
    if text == "'oops":  # through the command line too (shlex's error was a traceback)
        r = cli("build", "--checkpoint", str(fake_checkpoint(tmp_path / "ck")), "--out", str(tmp_path / "out"),
                "--no-wheels", "--submit-args", text, env=clean_env(tmp_path))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --submit-args: "), r.stderr
        assert problem in lines[0] and not (tmp_path / "out").exists()


def test_push_dry_run_lists_every_upload_and_never_echoes_credentials(tmp_path):
    fake_checkpoint(tmp_path / "run" / "ckpt" / "step-00000020")
    env = clean_env(tmp_path / "home", KAGGLE_USERNAME="bob", KAGGLE_KEY=SECRET)
    b = cli("build", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--no-wheels", env=env)
    assert b.returncode == 0, b.stderr[-2000:]
    r = cli("push", str(tmp_path / "out"), "--dry-run", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert SECRET not in r.stdout + r.stderr + b.stdout + b.stderr
    assert not any(SECRET in p.read_text(errors="ignore") for p in (tmp_path / "out").rglob("*") if p.is_file())
    out = r.stdout
    assert "nothing is uploaded" in out
    for ref in ("bob/trm-arc-code", "bob/trm-arc-weights", "bob/trm-arc-submission"):  # owner from KAGGLE_USERNAME
        assert ref in out
    for name in (*WEIGHT_FILES, "pipeline/ (as pipeline.zip)", "stages/ (as stages.zip)", "trm-arc-submission.ipynb"):
        assert name in out
    assert "optim.pt" not in out and "carry_rank" not in out
    assert out.index("bob/trm-arc-weights") < out.index("bob/trm-arc-submission")  # datasets before the notebook


def test_push_without_credentials_is_a_dry_run(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "ck")
    build_all(tmp_path / "out", [ckpt], BuildSettings(KaggleNames(owner="carol"), wheels=False))
    r = cli("push", str(tmp_path / "out"), env=clean_env(tmp_path / "home"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("dry run (no Kaggle credentials") and "carol/trm-arc-code" in r.stdout
    missing = cli("push", str(tmp_path / "nothing"), env=clean_env(tmp_path / "home"))
    assert missing.returncode == 2 and "build" in missing.stderr and "Traceback" not in missing.stderr


def test_credentials_are_found_where_the_kaggle_package_looks_and_not_returned(tmp_path):
    home = tmp_path / "home"
    assert credentials_source({}, home) is None and configured_username({}, home) is None
    (home / ".config" / "kaggle").mkdir(parents=True)
    (home / ".config" / "kaggle" / "kaggle.json").write_text(json.dumps({"username": "dave", "key": SECRET}))
    source = credentials_source({}, home)
    assert source.endswith("kaggle.json") and SECRET not in source
    assert configured_username({}, home) == "dave"
    assert credentials_source({"KAGGLE_USERNAME": "erin", "KAGGLE_KEY": SECRET}, tmp_path / "x") == \
        "the KAGGLE_USERNAME and KAGGLE_KEY environment variables"
    assert credentials_source({"KAGGLE_API_TOKEN": SECRET}, tmp_path / "x") == "the KAGGLE_API_TOKEN environment variable"
    assert configured_username({"KAGGLE_CONFIG_DIR": str(home / ".config" / "kaggle")}, tmp_path / "x") == "dave"


def test_push_refuses_the_placeholder_owner_before_touching_the_network(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "ck")
    build_all(tmp_path / "out", [ckpt], BuildSettings(KaggleNames(), wheels=False))
    plan = upload_plan(tmp_path / "out")
    assert plan[-1]["ref"] == f"{PLACEHOLDER_OWNER}/trm-arc-submission"
    with pytest.raises(KaggleError, match="placeholder"):
        push(plan, "notes")


def test_push_versions_existing_datasets_creates_new_ones_then_pushes_the_notebook(tmp_path, monkeypatch):
    """The kaggle package's calls, in order, with a recording stand-in for its API (no network)."""
    calls = []

    class Api:
        def authenticate(self):
            calls.append(("authenticate",))

        def dataset_status(self, ref):
            if ref.endswith("trm-arc-code") and not any(c[0] == "create" for c in calls):
                raise RuntimeError("404")  # not there yet: created
            return "ready"

        def dataset_create_new(self, folder, public, dir_mode):
            calls.append(("create", Path(folder).name, public, dir_mode))
            return types.SimpleNamespace(error=None)

        def dataset_create_version(self, folder, version_notes, dir_mode):
            calls.append(("version", Path(folder).name, version_notes, dir_mode))
            return types.SimpleNamespace(error=None)

        def kernels_push(self, folder):
            calls.append(("kernel", json.loads((Path(folder) / "kernel-metadata.json").read_text())["id"]))
            return types.SimpleNamespace(error=None, invalid_dataset_sources=[], invalid_competition_sources=[],
                                         url="https://www.kaggle.com/code/fay/trm-arc-submission")

    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", types.SimpleNamespace(KaggleApi=Api))
    ckpt = fake_checkpoint(tmp_path / "ck")
    build_all(tmp_path / "out", [ckpt], BuildSettings(KaggleNames(owner="fay"), wheels=False))
    push(upload_plan(tmp_path / "out"), "v2")
    assert calls == [("authenticate",), ("create", "code", False, "zip"), ("version", "weights", "v2", "zip"),
                     ("kernel", "fay/trm-arc-submission")]


# -- the notebook executed against a fake Kaggle tree -----------------------------------------------------------
def kaggle_tree(root: Path, built: Path, tasks: int = 3, extra: dict | None = None) -> tuple[Path, Path]:
    """INPUT with the competition (2026 layout: a few ARC-AGI-2 evaluation tasks, plus `extra`, as the hidden test
    file) and the built datasets mounted as /kaggle/input/<slug>; plus an empty WORKING."""
    comp = root / "input" / "competitions" / "arc-prize-2026-arc-agi-2"
    comp.mkdir(parents=True)
    ch = json.loads((ARC / "arc-agi_evaluation2_challenges.json").read_text())
    hidden = {**{k: ch[k] for k in sorted(ch)[:tasks]}, **(extra or {})}
    (comp / "arc-agi_test_challenges.json").write_text(json.dumps(hidden))
    for d in (built / "datasets").iterdir():
        slug = json.loads((d / "dataset-metadata.json").read_text())["id"].split("/")[1]
        shutil.copytree(d, root / "input" / slug, ignore=shutil.ignore_patterns("dataset-metadata.json"))
    (root / "working").mkdir()
    return root / "input", root / "working"


def execute_notebook(path: Path, input_root: Path, working: Path, scratch: Path, monkeypatch) -> tuple[dict, float, str]:
    """Run every cell with nbclient (kernel = this interpreter), offline; returns the notebook's summary, the
    wall time of the run and the cells' output."""
    from nbclient import NotebookClient

    for k, v in {"KAGGLE_INPUT_ROOT": str(input_root), "KAGGLE_WORKING_DIR": str(working), "TRM_SCRATCH_DIR": str(scratch),
                 "OMP_NUM_THREADS": "1", "PIP_NO_INDEX": "1", "HTTP_PROXY": "http://127.0.0.1:9",
                 "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(str(path), as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(working)}}).execute()
    wall = time.perf_counter() - t0
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    summary = json.loads(text.split("notebook summary: ", 1)[1].splitlines()[0])
    return summary, wall, text


def validate(challenges: Path, submission: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.validate", "--challenges", str(challenges), "--submission",
                           str(submission)], cwd=ROOT, capture_output=True, text=True, timeout=300)


STAND_IN_SUBMIT = '''"""Test double for stages.submit: writes a valid fallback submission at once, then overruns its budget."""
import argparse, json, time
from pathlib import Path
from submission.format import build_submission
from pipeline.data.tasks import write_json_atomic
p = argparse.ArgumentParser()
for a in ("--checkpoint", "--kaggle-root", "--out", "--budget-s", "--device"):
    p.add_argument(a)
args = p.parse_args()
raw = json.loads(next(Path(args.kaggle_root).rglob("arc-agi_test_challenges.json")).read_text())
write_json_atomic(args.out, build_submission(raw, {})[0])
print("stand-in: fallback written, now overrunning", flush=True)
time.sleep(3600)
'''


@needs_shared_arc
def test_notebook_stops_an_overrunning_submit_and_keeps_its_valid_submission(tmp_path, monkeypatch):
    """The watchdog, with the code dataset as Kaggle sometimes mounts folders (NAME.zip, not extracted)."""
    ckpt = fake_checkpoint(tmp_path / "ck")
    built = tmp_path / "built"
    build_all(built, [ckpt], BuildSettings(KaggleNames(owner="ann"), budget_s=40, wheels=False))
    input_root, working = kaggle_tree(tmp_path / "kaggle", built)
    code = input_root / "trm-arc-code"
    (code / "stages" / "submit.py").write_text(STAND_IN_SUBMIT)
    for d in [p for p in code.iterdir() if p.is_dir()]:
        with zipfile.ZipFile(code / f"{d.name}.zip", "w") as z:
            for f in d.rglob("*"):
                z.write(f, f.relative_to(d))
        shutil.rmtree(d)
    summary, wall, _ = execute_notebook(built / "notebook" / "trm-arc-submission.ipynb", input_root, working,
                                        tmp_path / "scratch", monkeypatch)
    assert summary["valid"] and summary["submit_exit_code"] != 0 and summary["tasks"] == 3
    assert summary["total_s"] <= 40 and wall <= 40 + 15  # + kernel start-up
    assert validate(input_root / "competitions" / "arc-prize-2026-arc-agi-2" / "arc-agi_test_challenges.json",
                    working / "submission.json").returncode == 0
    assert not (working / "site-packages").exists() and (tmp_path / "scratch" / "code" / "stages" / "submit.py").exists()


RECORDING_SUBMIT = '''"""Test double for stages.submit: writes the fallback submission, records its arguments, exits 0."""
import json, sys
from pathlib import Path
from submission.format import build_submission
from pipeline.data.tasks import write_json_atomic
argv = sys.argv[1:]
out = argv[argv.index("--out") + 1]
raw = json.loads(next(Path(argv[argv.index("--kaggle-root") + 1]).rglob("arc-agi_test_challenges.json")).read_text())
write_json_atomic(out, build_submission(raw, {})[0])
Path(out + ".argv.json").write_text(json.dumps(argv))
'''


@needs_shared_arc
def test_an_ensemble_build_packs_each_member_and_the_notebook_passes_them_in_order(tmp_path, monkeypatch):
    """Two checkpoints with weights 2 and 1: each in its own folder of the weights dataset, and the notebook's
    stages.submit gets both, in order, with their weights."""
    a, b = fake_checkpoint(tmp_path / "a"), fake_checkpoint(tmp_path / "b")
    (b.path / "model.safetensors").write_bytes(b"member b")
    built = tmp_path / "built"
    build_all(built, [a, b], BuildSettings(KaggleNames(owner="ann"), budget_s=60, wheels=False,
                                           member_weights=[2.0, 1.0]))
    weights = built / "datasets" / "weights"
    assert {p.name for p in (weights / "member-0").iterdir()} == set(WEIGHT_FILES)
    assert (weights / "member-1" / "model.safetensors").read_bytes() == b"member b"
    input_root, working = kaggle_tree(tmp_path / "kaggle", built)
    (input_root / "trm-arc-code" / "stages" / "submit.py").write_text(RECORDING_SUBMIT)
    summary, _, _ = execute_notebook(built / "notebook" / "trm-arc-submission.ipynb", input_root, working,
                                     tmp_path / "scratch", monkeypatch)
    assert summary["valid"] and summary["submit_exit_code"] == 0, summary
    argv = json.loads((working / "submission.json.argv.json").read_text())
    at, mounted = argv.index("--checkpoint"), input_root / "trm-arc-weights"
    assert argv[at + 1:at + 4] == [str(mounted / "member-0"), str(mounted / "member-1"), "--kaggle-root"], argv
    assert argv[argv.index("--weights") + 1:][:2] == ["2.0", "1.0"], argv


def test_ensemble_build_from_the_command_line_packs_a_checkpoint_named_twice_once(tmp_path):
    """stages.kaggle build --checkpoint A B A --weights 1 1 2: two folders (A's once), the notebook's members in
    order; a weight count that does not match is one line, exit 2."""
    a, b = fake_checkpoint(tmp_path / "a"), fake_checkpoint(tmp_path / "b")
    args = ["build", "--checkpoint", str(a.path), str(b.path), str(a.path), "--out", str(tmp_path / "out"),
            "--no-wheels", "--owner", "ann"]
    r = cli(*args, "--weights", "1", "1", "2", env=clean_env(tmp_path))
    assert r.returncode == 0, r.stderr
    weights = tmp_path / "out" / "datasets" / "weights"
    assert sorted(p.name for p in weights.iterdir() if p.is_dir()) == ["member-0", "member-1"]
    nb = nbformat.read(str(tmp_path / "out" / "notebook" / "trm-arc-submission.ipynb"), as_version=4)
    namespace = {}
    exec(next(c.source for c in nb.cells if c.cell_type == "code"), namespace)
    assert namespace["BUILD"]["members"] == ["member-0", "member-1", "member-0"]
    assert namespace["BUILD"]["member_weights"] == [1.0, 1.0, 2.0]
    bad = cli(*args, "--weights", "1", "2", env=clean_env(tmp_path))
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "2 weights for 3 checkpoints" in lines[0], bad.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A briefly trained demo model, tests/test_submit.py's (plumbing, not accuracy)."""
    return built_once(tmp_path_factory, "pretrain_20_steps", pretrain_20_steps)


@pytest.mark.slow
@needs_shared_arc
def test_notebook_runs_offline_against_a_fake_kaggle_tree(checkpoint, tmp_path, monkeypatch):
    budget = 150
    built = tmp_path / "built"
    # the demo TTT preset (the default ttt_full.yaml's batch of 384 fits no TTT step into this budget on a CPU), and a
    # pinned plan (2 TTT steps, 4 views): the notebook's plumbing, not the planner (tests/test_submit_flow.py's)
    r = subprocess.run([sys.executable, "-m", "stages.kaggle", "build", "--checkpoint", str(checkpoint), "--out",
                        str(built), "--budget-s", str(budget), "--no-wheels", "--owner", "tester", "--submit-args",
                        "--ttt-config configs/demo_ttt.yaml --ttt-steps 2 --views 4"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # the demo model's canvas (5x5) fits no ARC-AGI-2 task: one demo-sized task makes TTT and prediction run too
    small = synthetic_tasks("tasks=1,seed=0,size=4,demos=8,tests=2,fixed=1,families=flip_lr")[0]
    input_root, working = kaggle_tree(tmp_path / "kaggle", built, extra={small.id: small.to_json()})
    summary, wall, text = execute_notebook(built / "notebook" / "trm-arc-submission.ipynb", input_root, working,
                                           tmp_path / "scratch", monkeypatch)
    challenges = input_root / "competitions" / "arc-prize-2026-arc-agi-2" / "arc-agi_test_challenges.json"
    assert summary["valid"] and summary["submit_exit_code"] == 0 and summary["challenges"] == str(challenges)
    assert summary["tasks"] == 4 and summary["test_inputs"] == 5
    assert summary["total_s"] <= budget and wall <= budget + 15
    v = validate(challenges, working / "submission.json")
    assert v.returncode == 0, v.stderr
    assert set(json.loads((working / "submission.json").read_text())) == set(json.loads(challenges.read_text()))
    # the run itself, not the all-fallback file written before torch starts: TTT ran and the model predicted
    run = json.loads(re.search(r"^summary: (.*)$", text, re.MULTILINE).group(1))
    assert run["ttt_steps"] > 0 and run["predicted"] > 0, run
