"""Kaggle packaging: the three datasets a submission notebook needs (code, weights, wheels), the notebook itself
with its kernel-metadata.json, and the upload that `stages.kaggle push` performs or, dry, describes.

    DIR/notebook/        NAME.ipynb + kernel-metadata.json (competition source, GPU on, internet off, datasets)
    DIR/datasets/code/   the project's source (pipeline, kernels, stages, submission, configs, pins, LICENSE)
    DIR/datasets/weights/  the checkpoint files prediction and TTT read (no optimiser state, no ACT carries);
                           an ensemble's in member-0/, member-1/, ... (the notebook passes them in that order)
    DIR/datasets/wheels/   `pip download` of the pinned packages the notebook's processes import (torch excepted:
                           the Kaggle image has a CUDA build), plus requirements-kaggle.txt

Each dataset folder holds its dataset-metadata.json and the licence. Credentials are only ever detected here
(where the kaggle package looks for them), never printed or written. No torch import: the checkpoint comes
opened (pipeline/layout.py, which also names its files).
"""
from __future__ import annotations

import json
import os
import pprint
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from pipeline import layout
from pipeline.layout import Checkpoint
from pipeline.data.tasks import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("kaggle_notebook.py")
PLACEHOLDER_OWNER = "REPLACE-WITH-YOUR-KAGGLE-USERNAME"
COMPETITION = "arc-prize-2026-arc-agi-2"
DEFAULT_BUDGET_S = 36000  # 10 h of the 12 h limit: the rest is for start-up, installs and the unexpected
CODE_ITEMS = ("pipeline", "kernels", "stages", "submission", "configs", "requirements.txt", "pyproject.toml",
              "LICENSE", "README.md")
CODE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc", ".*")
WEIGHT_FILES = layout.PREDICTION_FILES  # what prediction and TTT read from a checkpoint folder
# The packages that the notebook's processes (stages.submit, stages.validate) import, pinned in requirements.txt.
NOTEBOOK_PACKAGES = ("numpy", "numba", "llvmlite", "pyyaml", "tqdm", "safetensors")
WHEELS_REQUIREMENTS = "requirements-kaggle.txt"
DATASET_LICENCE = "other"  # Kaggle's dataset licence list has no MIT entry; LICENSE in each dataset says MIT
METADATA_FILES = ("dataset-metadata.json", "kernel-metadata.json")
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{4,48}[a-z0-9]$")


class KaggleError(ValueError):
    """A packaging or upload problem the user can fix (bad slug, missing folder, no credentials)."""


@dataclass(frozen=True)
class KaggleNames:
    """Where things go on Kaggle: `owner/slug` for the three datasets and the notebook."""
    owner: str = PLACEHOLDER_OWNER
    code: str = "trm-arc-code"
    weights: str = "trm-arc-weights"
    wheels: str = "trm-arc-wheels"
    kernel: str = "trm-arc-submission"
    competition: str = COMPETITION

    def ref(self, slug: str) -> str:
        return f"{self.owner}/{slug}"

    def check(self) -> None:
        for field in ("code", "weights", "wheels", "kernel"):
            slug = getattr(self, field)
            if not SLUG.match(slug):
                raise KaggleError(f"{field} slug {slug!r}: 6-50 characters, lower-case letters, digits and dashes")


# -- credentials (presence only: values are never returned, printed or written) ------------------------------
def _config_dirs(env: dict, home: Path) -> list[Path]:
    """Where kaggle 2.2.4 reads kaggle.json: $KAGGLE_CONFIG_DIR, else ~/.kaggle, else $XDG_CONFIG_HOME/kaggle."""
    if env.get("KAGGLE_CONFIG_DIR"):
        return [Path(env["KAGGLE_CONFIG_DIR"])]
    xdg = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return [home / ".kaggle", xdg / "kaggle"]


def credentials_source(env: dict | None = None, home: Path | None = None) -> str | None:
    """Where the kaggle package would find credentials (a description, never the values), or None."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "the KAGGLE_USERNAME and KAGGLE_KEY environment variables"
    if env.get("KAGGLE_API_TOKEN"):
        return "the KAGGLE_API_TOKEN environment variable"
    for d in _config_dirs(env, home):
        if (d / "kaggle.json").is_file():
            return str(d / "kaggle.json")
    for f in ("access_token", "access_token.txt", "credentials.json"):
        if (home / ".kaggle" / f).is_file():
            return str(home / ".kaggle" / f)
    return None


def configured_username(env: dict | None = None, home: Path | None = None) -> str | None:
    """The Kaggle user name from KAGGLE_USERNAME or kaggle.json (its key is not kept)."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if env.get("KAGGLE_USERNAME"):
        return env["KAGGLE_USERNAME"]
    for d in _config_dirs(env, home):
        try:
            name = json.loads((d / "kaggle.json").read_text()).get("username")
        except (OSError, ValueError, AttributeError):
            continue
        if name:
            return str(name)
    return None


# -- build -----------------------------------------------------------------------------------------------------
@dataclass
class BuildSettings:
    names: KaggleNames
    budget_s: int = DEFAULT_BUDGET_S
    wheels: bool = True
    python_version: str = f"{sys.version_info.major}.{sys.version_info.minor}"  # the Kaggle image's, for wheels
    machine_shape: str | None = None  # kaggle's metadata field; it documents no L4 value (pick L4 in the editor)
    submit_args: list[str] = field(default_factory=list)
    """More `stages.submit` options for the notebook's run (a TTT preset, pinned steps...)."""
    member_weights: list[float] | None = None
    """An ensemble's `stages.submit --weights`, one per checkpoint (None: 1 each; stages.kaggle checks them)."""


def _reset(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _dataset_metadata(folder: Path, ref: str, title: str, description: str) -> None:
    shutil.copy2(ROOT / "LICENSE", folder / "LICENSE")
    write_json_atomic(folder / "dataset-metadata.json", {
        "title": title, "id": ref, "licenses": [{"name": DATASET_LICENCE}],
        "description": description + "\n\nPart of the TRM ARC pipeline; MIT licence (see LICENSE)."})


def build_code(folder: Path, names: KaggleNames) -> None:
    _reset(folder)
    for item in CODE_ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, folder / item, ignore=CODE_IGNORE)
        elif src.is_file():
            shutil.copy2(src, folder / item)
    _dataset_metadata(folder, names.ref(names.code), names.code,
                      "Source of the TRM ARC pipeline, run by the submission notebook from PYTHONPATH.")


def member_folders(checkpoints: list[Checkpoint]) -> list[str] | None:
    """Where each member's files go inside the weights dataset: None for one checkpoint (at the top); an
    ensemble's in member-<k>/, one folder per distinct checkpoint (one named twice is packed once)."""
    if len(checkpoints) == 1:
        return None
    seen: dict[Path, int] = {}
    return [f"member-{seen.setdefault(c.path.resolve(), len(seen))}" for c in checkpoints]


def build_weights(folder: Path, checkpoints: list[Checkpoint], names: KaggleNames) -> None:
    """Copy WEIGHT_FILES from each checkpoint folder (EMA weights and the id table when it has them): one
    checkpoint at the dataset's top, an ensemble's in member_folders()."""
    for checkpoint in checkpoints:
        missing = [f for f in layout.REQUIRED_FILES if not checkpoint.file(f).is_file()]
        if missing:
            raise KaggleError(f"{checkpoint.path}: not a usable checkpoint folder (missing {', '.join(missing)})")
    _reset(folder)
    described, packed = [], set()
    for checkpoint, sub in zip(checkpoints, member_folders(checkpoints) or ["."]):
        if sub in packed:
            continue
        packed.add(sub)
        (folder / sub).mkdir(exist_ok=True)
        copied = [f for f in WEIGHT_FILES if checkpoint.file(f).is_file()]
        for f in copied:
            shutil.copy2(checkpoint.file(f), folder / sub / f)
        described.append(f"{'' if sub == '.' else sub + ': '}{checkpoint.path.name} ({', '.join(copied)})")
    _dataset_metadata(folder, names.ref(names.weights), names.weights, f"TRM checkpoint {'; '.join(described)}.")


def pinned(packages=NOTEBOOK_PACKAGES, requirements: Path = ROOT / "requirements.txt") -> list[str]:
    """`name==version` for `packages`, read from requirements.txt (the one place versions are pinned)."""
    pins = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    missing = [p for p in packages if p not in pins]
    if missing:
        raise KaggleError(f"{requirements}: no pin for {missing}")
    return [f"{p}=={pins[p]}" for p in packages]


def build_wheels(folder: Path, settings: BuildSettings) -> None:
    """`pip download` the pinned packages as manylinux x86_64 wheels for the image's Python (network here, at
    build time; the notebook installs them with --no-index)."""
    _reset(folder)
    (folder / WHEELS_REQUIREMENTS).write_text("\n".join(pinned()) + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(folder), "--only-binary=:all:",
           "--implementation", "cp", "--python-version", settings.python_version,
           "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", "-r", str(folder / WHEELS_REQUIREMENTS)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise KaggleError(f"pip download of the notebook's wheels failed: {r.stderr.strip()[-1500:]}")
    _dataset_metadata(folder, settings.names.ref(settings.names.wheels), settings.names.wheels,
                      f"Wheels (CPython {settings.python_version}, manylinux x86_64) of {', '.join(pinned())}.")


def notebook_cells(build: dict) -> list:
    """The template's `# %%` cells as nbformat cells, with `BUILD = {}` replaced by the build's settings."""
    text = TEMPLATE.read_text()
    chunks = re.split(r"^# %%(.*)$", text, flags=re.M)[1:]  # [0] is the docstring before the first cell
    cells = []
    for header, body in zip(chunks[::2], chunks[1::2]):
        body = body.strip("\n")
        if "[markdown]" in header:
            cells.append(nbformat.v4.new_markdown_cell("\n".join(re.sub(r"^# ?", "", ln) for ln in body.splitlines())))
            continue
        if body.startswith("BUILD = {}"):
            body = "# written by `python -m stages.kaggle build`\nBUILD = " + pprint.pformat(build, sort_dicts=False)
        cells.append(nbformat.v4.new_code_cell(body))
    return cells


def build_notebook(folder: Path, settings: BuildSettings, git: str, members: list[str] | None = None) -> Path:
    names = settings.names
    _reset(folder)
    build = {"code": names.ref(names.code), "weights": names.ref(names.weights),
             "wheels": names.ref(names.wheels) if settings.wheels else None, "budget_s": settings.budget_s,
             "submit_args": settings.submit_args, "checkpoint_marks": [layout.META, layout.CONFIG],
             "members": members, "member_weights": settings.member_weights,
             "competition": names.competition, "git": git, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    nb = nbformat.v4.new_notebook(cells=notebook_cells(build))
    # "kaggle" holds the editor's own settings keys as seen in notebooks pulled from Kaggle (the accelerator is
    # left to the editor: no documented value names the L4 x4 machine)
    nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "language_info": {"name": "python"},
                        "kaggle": {"isInternetEnabled": False, "isGpuEnabled": True, "language": "python",
                                   "sourceType": "notebook"}})
    nbformat.validate(nb)
    path = folder / f"{names.kernel}.ipynb"
    nbformat.write(nb, str(path))
    meta = {"id": names.ref(names.kernel), "title": names.kernel.replace("-", " "), "code_file": path.name,
            "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": True,
            "enable_tpu": False, "enable_internet": False, "competition_sources": [names.competition],
            "dataset_sources": [v for v in (build["code"], build["weights"], build["wheels"]) if v],
            "kernel_sources": [], "model_sources": []}
    if settings.machine_shape:
        meta["machine_shape"] = settings.machine_shape
    write_json_atomic(folder / "kernel-metadata.json", meta)
    return path


def build_all(out: Path, checkpoints: list[Checkpoint], settings: BuildSettings, git: str = "unknown") -> dict:
    """Write DIR/notebook and DIR/datasets/{code,weights,wheels} for one checkpoint or an ensemble; returns what
    was written (for the CLI)."""
    settings.names.check()
    out = Path(out)
    build_code(out / "datasets" / "code", settings.names)
    build_weights(out / "datasets" / "weights", checkpoints, settings.names)
    if settings.wheels:
        build_wheels(out / "datasets" / "wheels", settings)
    else:
        shutil.rmtree(out / "datasets" / "wheels", ignore_errors=True)
    notebook = build_notebook(out / "notebook", settings, git, member_folders(checkpoints))
    write_json_atomic(out / "build.json", {**asdict(settings), "checkpoints": [str(c.path) for c in checkpoints],
                                           "git": git})
    return {"notebook": str(notebook), "datasets": [str(p) for p in sorted((out / "datasets").iterdir())]}


# -- push --------------------------------------------------------------------------------------------------------
def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def upload_plan(out: Path) -> list[dict]:
    """What `push` uploads, in order: each dataset folder (files as they are, sub-folders as NAME.zip, as the
    kaggle package's dir_mode="zip" does) and then the notebook."""
    out = Path(out)
    if not (out / "notebook" / "kernel-metadata.json").is_file():
        raise KaggleError(f"{out}: no notebook/kernel-metadata.json (run `python -m stages.kaggle build` first)")
    kernel = json.loads((out / "notebook" / "kernel-metadata.json").read_text())
    plan = []
    for ref in kernel["dataset_sources"]:
        folder = next((d for d in sorted((out / "datasets").glob("*"))
                       if (d / "dataset-metadata.json").is_file()
                       and json.loads((d / "dataset-metadata.json").read_text())["id"] == ref), None)
        if folder is None:
            raise KaggleError(f"{out}: the notebook uses dataset {ref} but no folder under datasets/ builds it")
        items = [{"name": p.name + ("/ (as " + p.name + ".zip)" if p.is_dir() else ""), "bytes": _size(p)}
                 for p in sorted(folder.iterdir()) if p.name not in METADATA_FILES]
        plan.append({"kind": "dataset", "ref": ref, "folder": str(folder), "items": items})
    plan.append({"kind": "kernel", "ref": kernel["id"], "folder": str(out / "notebook"),
                 "items": [{"name": kernel["code_file"], "bytes": _size(out / "notebook" / kernel["code_file"])}],
                 "settings": {k: kernel.get(k) for k in ("competition_sources", "dataset_sources", "enable_gpu",
                                                         "enable_internet", "machine_shape", "is_private")}})
    return plan


def describe_plan(plan: list[dict]) -> str:
    lines = []
    for step in plan:
        total = sum(i["bytes"] for i in step["items"]) / 1e6
        url = f"https://www.kaggle.com/{'datasets' if step['kind'] == 'dataset' else 'code'}/{step['ref']}"
        lines.append(f"{step['kind']} {step['ref']} ({url}): create, or a new version if it exists, from "
                     f"{step['folder']} ({total:.1f} MB before compression):")
        lines += [f"    {i['name']}  {i['bytes'] / 1e6:.2f} MB" for i in step["items"]]
        if step["kind"] == "kernel":
            lines += [f"    {k}: {json.dumps(v)}" for k, v in step["settings"].items() if v is not None]
    if any(step["ref"].startswith(PLACEHOLDER_OWNER + "/") for step in plan):
        lines.append(f"warning: the owner is the placeholder {PLACEHOLDER_OWNER}: rebuild with --owner to push")
    return "\n".join(lines)


def push(plan: list[dict], notes: str, wait_s: float = 900) -> None:
    """Create or version each dataset, wait until Kaggle has processed it, then push the notebook. Uses the
    kaggle package, which reads the credentials itself."""
    if any(step["ref"].startswith(PLACEHOLDER_OWNER + "/") for step in plan):
        raise KaggleError(f"the owner is the placeholder {PLACEHOLDER_OWNER}: rebuild with --owner YOUR_KAGGLE_NAME")
    from kaggle.api.kaggle_api_extended import KaggleApi  # imported here: the package authenticates at import

    api = KaggleApi()
    api.authenticate()
    for step in plan:
        if step["kind"] != "dataset":
            continue
        try:
            api.dataset_status(step["ref"])
            exists = True
        except Exception:  # the package raises its HTTP client's error for an unknown dataset
            exists = False
        if exists:
            r = api.dataset_create_version(step["folder"], version_notes=notes, dir_mode="zip")
        else:
            r = api.dataset_create_new(step["folder"], public=False, dir_mode="zip")
        if getattr(r, "error", None):
            raise KaggleError(f"dataset {step['ref']}: {r.error}")
        print(f"dataset {step['ref']}: {'new version' if exists else 'created'}", flush=True)
    for step in plan:  # a notebook may only name datasets that Kaggle has finished processing
        if step["kind"] == "dataset":
            deadline = time.time() + wait_s
            while (status := str(api.dataset_status(step["ref"])).lower()) != "ready":
                if time.time() > deadline or "error" in status:
                    raise KaggleError(f"dataset {step['ref']} is {status!r}, not ready; push again later")
                time.sleep(10)
    kernel = plan[-1]
    r = api.kernels_push(kernel["folder"])
    problems = [getattr(r, "error", None), *(getattr(r, "invalid_dataset_sources", None) or []),
                *(getattr(r, "invalid_competition_sources", None) or [])]
    if any(problems):
        raise KaggleError(f"notebook {kernel['ref']}: {'; '.join(str(p) for p in problems if p)}")
    print(f"notebook {kernel['ref']}: pushed{' (' + r.url + ')' if getattr(r, 'url', None) else ''}", flush=True)
