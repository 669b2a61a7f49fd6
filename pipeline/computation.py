"""The checkpoint decides the computation. A stage that starts from a checkpoint (stages.ttt, stages.predict,
stages.submit, the Kaggle notebook) computes as that checkpoint was trained (its saved compute.crop and
compute.carry, training translation range, cycles and N_sup) and evaluates as the official code does (every
view runs all N_sup steps, test inputs are never translated; TTT starts every puzzle row at the table's mean, as
the official loader resets a resized table), unless the user asks for a departure (`--set`, a flag, or an extra
preset such as configs/ttt_fast.yaml). `departures` is the one list of what a resolved config computes
differently; the stages print it as one line and store it (a TTT run's ttt.json, submit's plan.json).
Works on config objects and dicts only (no torch, no pipeline imports)."""
from __future__ import annotations

OFFICIAL_EVALUATION = {"adaptive_halting": False, "translate": False, "max_steps": 0}
"""predict.* as the official evaluation runs (evaluators/arc.py, trm.py L270-283): all N_sup steps, no
translation of test inputs."""


def with_official_evaluation(cfg: dict) -> dict:
    """A resolved config as a dict (a checkpoint's config.yaml) with the official evaluation settings: what a
    stage starts from when it loads a checkpoint. Evaluation settings are asked for where evaluation runs
    and never inherited from a checkpoint (older versions saved adaptive halting and translated views as
    their defaults)."""
    return {**cfg, "predict": {**cfg.get("predict", {}), **OFFICIAL_EVALUATION}}


def evaluation_base(saved: dict) -> dict:
    """What a stage that loads a checkpoint predicts with, before its own overrides: a pretrained checkpoint's
    config with the official evaluation; a TTT run's (train.init_from set) as it was saved, since its
    predict settings were chosen when it was trained (the official evaluation, then its presets and --set,
    listed among its departures) and predicting from the run keeps them."""
    return saved if saved.get("train", {}).get("init_from") else with_official_evaluation(saved)


def _translation(translate: bool, max_offset: int) -> str:
    if not translate:
        return "none"
    return "anywhere" if max_offset == 0 else f"up to {max_offset} cell{'s' if max_offset > 1 else ''}"


def computation(cfg) -> dict[str, str]:
    """What a resolved RunConfig computes, setting by setting (the settings a departure can change)."""
    m, d, p = cfg.model, cfg.data, cfg.predict
    return {"compute.crop": str(cfg.compute.crop).lower(), "compute.carry": cfg.compute.carry,
            "model.one_step_grad": str(m.one_step_grad).lower(),  # the TRM ablations (configs/ablations/)
            "model.act_continue": "null" if m.act_continue is None else str(m.act_continue).lower(),
            "model.h_cycles": str(m.h_cycles), "model.l_cycles": str(m.l_cycles),
            "model.halt_max_steps": str(m.halt_max_steps),
            "data.translate/max_offset": _translation(d.translate, d.max_offset),
            "data.sampler": d.sampler,
            "data.offsets": "fresh per draw" if d.fresh_offsets or d.sampler == "independent" else "fixed per version",
            "data.bucket_steps": str(d.bucket_steps),
            "predict.adaptive_halting": str(p.adaptive_halting and m.halting).lower(),
            "predict.max_steps": "N_sup" if p.max_steps in (0, m.halt_max_steps) else str(p.max_steps),
            "predict.translate/max_offset": _translation(p.translate, d.max_offset),
            "train.keep_known_rows": str(cfg.train.keep_known_rows).lower()}


def model_overrides(cfg) -> list[str]:
    """`key=value` overrides that make a checkpoint's model compute as `cfg` does (compute.crop, compute.carry,
    cycles, N_sup): how the submit planner times the pretrained model with the TTT run's computation."""
    return [f"{k}={v}" for k, v in computation(cfg).items() if k.startswith(("compute.", "model."))]


def checkpoint_computation(checkpoint_cfg) -> dict[str, str]:
    """What a run from this checkpoint computes by default: as it was trained, evaluated officially, and (TTT)
    every puzzle row starting at the mean of its table, as the official loader resets a resized table."""
    return {**computation(checkpoint_cfg), "predict.adaptive_halting": "false", "predict.max_steps": "N_sup",
            "predict.translate/max_offset": "none", "train.keep_known_rows": "false"}


def departures(cfg, checkpoint_cfg) -> list[str]:
    """Where a resolved config `cfg` computes otherwise than its checkpoint's computation, as 'setting:
    checkpoint -> this run' strings (empty: faithful)."""
    ref, mine = checkpoint_computation(checkpoint_cfg), computation(cfg)
    return [f"{k}: {ref[k]} -> {mine[k]}" for k in mine if mine[k] != ref[k]]


def describe(found: list[str]) -> str:
    """The one line a stage prints."""
    if not found:
        return "computation: as the checkpoint was trained, official evaluation (no departure)"
    return f"computation: {len(found)} departure(s) from the checkpoint's: " + "; ".join(found)
