"""Shared fixtures. Tests run from the repo root so that our `pipeline`/`kernels` packages win.

Tests that read `../shared` (ARC data, the official fixtures) carry `needs_shared(path)`: in a developer's loop a
missing path skips them; in CI (`CI=true`, which .ci/run exports) it fails them, so a CI without `../shared` can
never pass having tested none of the official-equality claims.

Under pytest-xdist (`make test`: `-n 2 --dist loadgroup`) each worker runs one thread and the stages it starts
inherit OMP_NUM_THREADS=1; a session fixture is built once for the whole run (`built_once`: the first worker to
need it builds it, under a lock, where every worker finds it), not once per worker; tests marked `alone` time
wall-clock and run with no other test beside them."""
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ARC = SHARED / "arc"
FIXTURE = SHARED / "fixtures" / "trm_official_tiny"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... in a pytest-xdist worker, else None

if XDIST_WORKER:  # two workers on two cores: one thread each, for this process and the stages it starts
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def needs_shared(path: Path):
    """Mark a test that reads `path` under ../shared (see the module docstring)."""
    return pytest.mark.needs_shared(path=path)


needs_shared_arc = needs_shared(ARC)
needs_fixture = needs_shared(FIXTURE)


def pytest_collection_modifyitems(items):
    """Under xdist: the slow tests first (in their order), so the longest ones do not start last and leave one
    worker idle at the end of the run."""
    if XDIST_WORKER:  # every worker sorts the same way: xdist needs the same order from each
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@contextmanager
def _turn(item):
    """Under xdist: an `alone` test holds an exclusive lock, every other test a shared one, on a file the
    workers share (the run's base temp); a turnstile lock keeps new tests from starting while an `alone` test
    waits for the one in flight to end."""
    if not XDIST_WORKER:
        yield
        return
    shared = Path(item.config.getoption("basetemp")).parent  # a worker's basetemp: <run's basetemp>/popen-gwN
    alone = item.get_closest_marker("alone") is not None
    with open(shared / "alone.turnstile", "a") as turnstile, open(shared / "alone.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield  # closing the files releases the locks


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with _turn(item):  # setup, call and teardown: a module fixture built for the test is inside the lock too
        return (yield)


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs_shared"):
        path = mark.kwargs["path"]
        if not path.exists():
            if IN_CI:
                pytest.fail(f"{path} is absent: CI (CI=true) must run with ../shared beside the checkout", pytrace=False)
            pytest.skip(f"{path} is absent (CI fails here instead)")


def run_temp(tmp_path_factory) -> Path:
    """This run's base temp: shared by the xdist workers (each has its own folder in it)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if XDIST_WORKER else root


@pytest.fixture(scope="session", autouse=True)
def _torch_extensions_of_this_run(tmp_path_factory):
    """Extensions torch builds at run time (DeepSpeed's CPU shared-memory op, compiled on its first use: minutes)
    go into this run's base temp, not ~/.cache/torch_extensions, which every run on the machine shares: there
    another run rebuilds them (other paths, other flags) under its lock while this one loads them."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(run_temp(tmp_path_factory) / "torch_extensions"))


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, filled by `build(folder)` once per test run: under xdist in the run's base temp, which
    every worker shares, by the first worker to ask while the others wait on its lock (xdist_group marks do not
    group anything under pytest 9.2 with pytest-xdist 3.8: pytest-xdist issue 1386)."""
    root = run_temp(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a failed build's leftovers
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _pretrain_demo(run_dir: Path) -> None:
    from bench.spread import pretrain_demo  # the same run over seeds, threads and kernels: python -m bench.spread

    pretrain_demo(run_dir)


def pretrain_20_steps(run_dir: Path) -> None:
    """A briefly trained demo model (it need not be good: the tests using it check plumbing, not accuracy)."""
    r = subprocess.run([sys.executable, "-m", "stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set",
                        f"run_dir={run_dir}", "train.steps=20", "train.progress=false", "train.eval_every=0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.fixture(scope="session")
def demo_pretrained(tmp_path_factory) -> Path:
    """The demo config pretrained in full (a few CPU minutes), shared by the slow learning and TTT tests."""
    return built_once(tmp_path_factory, "demo_pretrained", _pretrain_demo)


def fixture_train_step(model, batch: dict, carry_dtype=torch.float32, context=None, min_steps=None):
    """One training step of `model` from a fresh carry on an official fixture batch (`inputs`, `labels`,
    `puzzle_identifiers`), loss backward done, as the official-fidelity tests compare it: (carry, loss, metrics,
    rows) where rows.grad is the gradient of the batch's puzzle-table rows (the official `local_weights`)."""
    from pipeline.nn.act import empty_carry, supervision_step

    model.train()
    b = {"inputs": batch["inputs"], "labels": batch["labels"].long(), "puzzle_ids": batch["puzzle_identifiers"].long()}
    held = {}

    def vecs(ids):
        held["rows"] = model.puzzle_emb[ids].detach().clone().requires_grad_(True)
        return held["rows"]

    with context or contextlib.nullcontext():
        carry, loss, metrics, _ = supervision_step(model, empty_carry(model, b, carry_dtype), b, vecs,
                                                   min_steps=min_steps)
    loss.backward()
    return carry, loss, metrics, held["rows"]


def fixture_eval_steps(model, batch: dict, steps: int = 4):
    """A fixture's evaluation steps from the initial carry, without gradients, as the official fixtures record them:
    per step (k from 1) the carried states and the model's outputs (y, z, logits, q_halt, q_continue)."""
    model.eval()
    out = []
    with torch.no_grad():
        vecs = model.puzzle_emb[batch["puzzle_identifiers"].long()]
        y, z = model.initial_state(batch["inputs"].shape[0], torch.float32)
        for k in range(1, steps + 1):
            y, z, logits, q_halt, q_cont = model(batch["inputs"], vecs, y, z)
            out.append((k, y, z, logits, q_halt, q_cont))
    return out


def assert_step_grads(model, rows, expected: dict, ours, tol: dict) -> None:
    """Every gradient of a fixture's training step (`train.step1.grad.NAME`, official names) against the model's:
    one per trainable parameter plus the puzzle rows' (`puzzle_emb.local_weights`, `rows.grad`); `ours(NAME)` is the
    parameter's name here (its one converted name)."""
    params = dict(model.named_parameters())
    grads = {k[len("train.step1.grad."):]: v for k, v in expected.items() if k.startswith("train.step1.grad.")}
    assert len(grads) == len(params) + 1
    for name, want in grads.items():
        if name == "puzzle_emb.local_weights":
            got = rows.grad
        else:
            (key,) = ours(name)
            got = params[key].grad
        torch.testing.assert_close(got, want, **tol, msg=lambda m, name=name: f"{name}: {m}")
