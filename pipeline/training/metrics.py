"""Logging set-up and metric sinks: JSONL in the run folder, tensorboard when installed, wandb in offline mode
when asked (train.wandb_project), a null sink on non-main ranks; and the loss/accuracy PNG drawn at the end of a run."""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

from pipeline import layout

log = logging.getLogger(__name__)


def setup_logging(run_dir: Path | None, is_main: bool, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / layout.LOG))
    logging.basicConfig(level=level if is_main else logging.WARNING, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class NullSink:
    def log(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


class RunSink(NullSink):
    """Appends {"step": N, "train/loss": ...} lines to metrics.jsonl; mirrors to tensorboard if available, and to
    wandb when `wandb_project` is set."""

    def __init__(self, run_dir: Path, wandb_project: str = "", config: dict | None = None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / layout.METRICS
        self.file = self.path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency

            self.tb = SummaryWriter(str(run_dir / layout.TB_DIR))
        except ImportError:
            self.tb = None
        self.wandb = wandb_run(run_dir, wandb_project, config or {}) if wandb_project else None

    def log(self, step: int, metrics: dict) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def wandb_run(run_dir: Path, project: str, config: dict):
    """An offline wandb run in RUN/wandb, as the official code logs (upload later with `wandb sync RUN/wandb/
    offline-run-*`). wandb is optional: imported only here, when train.wandb_project asks for it (build_run
    refuses such a run, before building anything, when the package is missing). One wandb id per run folder, so a resumed run
    continues the same wandb run."""
    import wandb  # optional dependency

    run_id = f"{run_dir.name}-{hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]}"
    return wandb.init(project=project, dir=str(run_dir), mode="offline", config=config, name=run_dir.name,
                      id=run_id, resume="allow")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_curves(run_dir: Path, prefix: str = "train") -> Path | None:
    """curves.png: loss and exact accuracy over steps (plus held-out pass@2 when evaluated)."""
    rows = read_metrics(run_dir / layout.METRICS)
    if not rows:
        return None
    try:
        import matplotlib
    except ImportError:  # an image without it (a lent GPU machine): the numbers stay in metrics.jsonl
        log.warning("matplotlib is not installed: %s not drawn", run_dir / layout.CURVES)
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    series = [(f"{prefix}/loss", axes[0]), (f"{prefix}/exact_accuracy", axes[1]), ("eval/pass@2", axes[1])]
    for key, ax in series:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key, marker="o" if key.startswith("eval") else None)
    for ax, title in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("step"), ax.set_title(title), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / layout.CURVES
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
