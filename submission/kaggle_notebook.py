"""The cells of the Kaggle submission notebook, in `# %%` percent format. Never imported: submission.kaggle
splits this file on its `# %%` markers and writes the cells with nbformat, replacing the `BUILD = {}` line by
the build's settings. Everything before the first marker (this docstring) is left out.

The notebook runs with the internet off. It imports nothing of the project itself: the attached code and
wheels reach the work through PYTHONPATH of the child processes, installed (if at all) under /tmp, never into
/kaggle/working (packages installed there have made submissions end in an error at teardown)."""

# %% [markdown]
# # TRM for the ARC Prize: submission
#
# Runs the project's budgeted hidden-test flow (`stages.submit`: fallback first, then test-time training,
# prediction over augmented views and voting) on the competition's `arc-agi_test_challenges.json` and writes
# `/kaggle/working/submission.json`, valid at every moment of the run.
#
# **Settings** (right-hand panel): *Internet* off; *Accelerator* GPU L4 x4 (offered only to notebooks created
# from the competition page). **Input**: the competition and the three datasets named in the next cell (code,
# weights, wheels); datasets are not carried over when a notebook is forked or copied, so attach them again.
#
# Code: MIT licence, see `LICENSE` in the code dataset.

# %%
BUILD = {}  # the build's settings (datasets, budget), written by `python -m stages.kaggle build`

# %%
# Where things are. The environment variables exist so that a test can run this notebook against a fake tree.
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

T0 = time.time()
INPUT = Path(os.environ.get("KAGGLE_INPUT_ROOT", "/kaggle/input"))
WORKING = Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))
SCRATCH = Path(os.environ.get("TRM_SCRATCH_DIR", "/tmp/trm"))  # installs and caches: never /kaggle/working
SUBMISSION = WORKING / "submission.json"
BUDGET_S = float(os.environ.get("TRM_BUDGET_S") or BUILD["budget_s"])
SCRATCH.mkdir(parents=True, exist_ok=True)
WORKING.mkdir(parents=True, exist_ok=True)


def attached(ref: str, looks_right) -> Path:
    """The folder where Kaggle mounted dataset `owner/slug`: /kaggle/input/slug, /kaggle/input/datasets/owner/slug,
    or any folder named slug up to three levels down (mount layouts have changed between years)."""
    owner, slug = ref.split("/")
    candidates = [INPUT / slug, INPUT / "datasets" / owner / slug]
    for root, dirs, _ in os.walk(INPUT):
        depth = len(Path(root).relative_to(INPUT).parts)
        candidates += [Path(root) / d for d in dirs if d == slug]
        if depth >= 2:
            dirs[:] = []
    for folder in candidates:
        if folder.is_dir() and looks_right(folder):
            return folder
    raise FileNotFoundError(f"dataset {ref} is not attached (or is not the expected content): in the notebook "
                            f"editor use Add Input > Datasets > {ref}. Datasets are not carried over when a "
                            "notebook is forked.")


def code_root(folder: Path) -> Path:
    """The project's source. Uploaded folders arrive as folders, or as NAME.zip when Kaggle did not extract them;
    those are extracted under SCRATCH."""
    if (folder / "stages" / "submit.py").exists():
        return folder
    out = SCRATCH / "code"
    for item in folder.iterdir():
        if item.suffix == ".zip":
            with zipfile.ZipFile(item) as z:
                z.extractall(out / item.stem)
        elif item.is_file():
            (out / item.name).parent.mkdir(parents=True, exist_ok=True)
            (out / item.name).write_bytes(item.read_bytes())
    return out


CODE = code_root(attached(BUILD["code"],
                          lambda p: (p / "stages" / "submit.py").exists() or (p / "stages.zip").exists()))
MEMBERS = BUILD["members"] or ["."]  # an ensemble's checkpoints are in subfolders of the weights dataset
WEIGHTS = attached(BUILD["weights"], lambda p: all((p / m / f).exists() for m in MEMBERS
                                                   for f in BUILD["checkpoint_marks"]))
CHECKPOINTS = [str(WEIGHTS / m) for m in MEMBERS]
WHEELS = attached(BUILD["wheels"], lambda p: (p / "requirements-kaggle.txt").exists()) if BUILD["wheels"] else None
print(f"code {CODE}\nweights {WEIGHTS}\nwheels {WHEELS or '(none: the image packages are used)'}")

# %%
# Pinned packages from the wheels dataset into SCRATCH (outside /kaggle/working), then an environment for the
# child processes: attached code first, then those packages, then the image's (torch comes from the image).
SITE = SCRATCH / "site-packages"
if WHEELS:
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(WHEELS),
                          "--target", str(SITE), "--upgrade", "--quiet", "-r", str(WHEELS / "requirements-kaggle.txt")],
                         capture_output=True, text=True)
    if pip.returncode:
        print("warning: the pinned wheels did not install, the image's packages are used instead:\n"
              + pip.stderr[-2000:])
ENV = {**os.environ,
       "PYTHONPATH": os.pathsep.join(p for p in (str(CODE), str(SITE), os.environ.get("PYTHONPATH", "")) if p),
       "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "NUMBA_CACHE_DIR": str(SCRATCH / "numba"),
       "TRM_SCRATCH_DIR": str(SCRATCH)}  # stages.submit keeps its TTT run there
probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count(), torch.__version__)"],
                       env=ENV, cwd=CODE, capture_output=True, text=True, timeout=300)
GPUS, TORCH = (int(probe.stdout.split()[0]), probe.stdout.split()[1]) if probe.returncode == 0 else (0, "none")
if probe.returncode:
    print("warning: torch did not import, so no GPU is used:\n" + probe.stderr[-2000:])
print(f"{GPUS} GPU(s), torch {TORCH} (from the image); "
      f"{time.time() - T0:.0f}s of the {BUDGET_S:.0f}s budget spent on setup")

# %%
# The budgeted flow: one process per GPU. It writes a valid fallback first and improves it atomically, so the
# watchdog below can stop it at any moment and a valid submission is still on disk.
reserve = min(120.0, max(30.0, 0.1 * BUDGET_S))  # a little grace for stages.submit, the rest for validation
budget = max(1, int(BUDGET_S - (time.time() - T0) - reserve))
submit = ["-m", "stages.submit", "--checkpoint", *CHECKPOINTS, "--kaggle-root", str(INPUT), "--out", str(SUBMISSION),
          "--budget-s", str(budget), "--device", "cuda" if GPUS else "cpu", *BUILD["submit_args"]]
if BUILD["member_weights"]:
    submit += ["--weights", *map(str, BUILD["member_weights"])]
if GPUS > 1:
    submit = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={GPUS}", *submit]
print("running", " ".join(submit))
t_submit = time.time()
proc = subprocess.Popen([sys.executable, *submit], cwd=CODE, env=ENV, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def forward(stream):
    for line in stream:
        print(line, end="", flush=True)


echo = threading.Thread(target=forward, args=(proc.stdout,), daemon=True)
echo.start()
try:
    SUBMIT_RC = proc.wait(timeout=budget + reserve / 4)
except subprocess.TimeoutExpired:
    print("watchdog: stages.submit overran its budget; stopping it (the submission on disk stays valid)")
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        SUBMIT_RC = proc.wait(timeout=reserve / 8)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        SUBMIT_RC = proc.wait()
echo.join(timeout=5)
SUBMIT_S = time.time() - t_submit

# %%
# Validate against the challenges file the submission answers (the one whose task ids it covers), then summarise.
if not SUBMISSION.exists():
    raise RuntimeError(f"no {SUBMISSION}: stages.submit exited with {SUBMIT_RC}; see its output above")
answered = set(json.loads(SUBMISSION.read_text()))
tests = sorted(p for p in INPUT.rglob("arc-agi_test_challenges.json") if set(json.loads(p.read_text())) == answered)
if not tests:
    raise RuntimeError(f"{SUBMISSION} answers no arc-agi_test_challenges.json under {INPUT}")
check = subprocess.run([sys.executable, "-m", "stages.validate", "--challenges", str(tests[0]), "--submission",
                        str(SUBMISSION)], cwd=CODE, env=ENV, capture_output=True, text=True, timeout=600)
print(check.stdout + check.stderr[-3000:])
challenges = json.loads(tests[0].read_text())
inputs = sum(len(t["test"]) for t in challenges.values() if isinstance(t, dict) and isinstance(t.get("test"), list))
SUMMARY = {"valid": check.returncode == 0, "submit_exit_code": SUBMIT_RC, "gpus": GPUS, "challenges": str(tests[0]),
           "tasks": len(challenges), "test_inputs": inputs, "submit_s": round(SUBMIT_S, 1),
           "total_s": round(time.time() - T0, 1), "budget_s": BUDGET_S}
print("notebook summary:", json.dumps(SUMMARY))
if check.returncode:
    raise RuntimeError("the submission does not validate; see the problems above")
