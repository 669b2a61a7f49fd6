"""Reference values of the official AdamATan2 update, for tests/test_model.py: a few steps of two parameter
groups (weight decay on, gradients of mixed scale, one parameter without a gradient on one step), computed
in float64 NumPy from the official kernel's formula and written to tests/data/adam_atan2_reference.json.

    python scripts/adam_atan2_reference.py            # rewrites the JSON (run once; the JSON is committed)

The formula is `adam_math` in csrc/adam_atan2.cu of github.com/imoneoi/adam-atan2 at commit
42a1aeb38cd0838d42631b18369505e86e5bd3fe (the `adam-atan2` package TRM installs; a CUDA extension, not
installable here), with the per-tensor constants of its FusedAdamMathFunctor:
    step_size = lr / (1 - beta1^step), wd_alpha = 1 - lr * weight_decay, bc2_sqrt = sqrt(1 - beta2^step)
    param *= wd_alpha
    exp_avg = lerp(exp_avg, grad, 1 - beta1);  exp_avg_sq = lerp(exp_avg_sq, grad^2, 1 - beta2)
    param -= step_size * atan2(exp_avg, sqrt(exp_avg_sq) / bc2_sqrt)
where lerp(v0, v1, t) = fma(t, v1, fma(-t, v0, v0)) and `step` counts the steps this parameter had a
gradient (adam_atan2.py skips a parameter whose grad is None, step counter included). Written from that
text, not from pipeline/training/optim.py.
"""
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "adam_atan2_reference.json"
GROUPS = [{"lr": 0.05, "betas": [0.9, 0.95], "weight_decay": 0.1, "shapes": [[3, 4], [5]]},
          {"lr": 0.01, "betas": [0.8, 0.99], "weight_decay": 0.5, "shapes": [[2, 3]]}]
STEPS = 6
NO_GRAD = (2, 1)
"""(step index, parameter index): this parameter has no gradient at that step (its state does not advance)."""


def lerp(v0, v1, t):
    return t * v1 + (-t * v0 + v0)


def main() -> None:
    rng = np.random.default_rng(19)
    params = [rng.normal(size=s) for g in GROUPS for s in g["shapes"]]
    group_of = [k for k, g in enumerate(GROUPS) for _ in g["shapes"]]
    init = [p.tolist() for p in params]
    m, v, count = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params], [0] * len(params)
    grads, after = [], []
    for step in range(STEPS):
        step_grads = []
        for i, p in enumerate(params):
            if (step, i) == NO_GRAD:
                step_grads.append(None)
                continue
            g = rng.normal(size=p.shape) * np.exp(2.0 * rng.normal(size=p.shape))  # scales ~1e-3 .. 1e3
            g.flat[step % g.size] = 0.0
            step_grads.append(g.tolist())
            grp = GROUPS[group_of[i]]
            lr, (b1, b2), wd = grp["lr"], grp["betas"], grp["weight_decay"]
            count[i] += 1
            step_size = lr / (1 - b1 ** count[i])
            wd_alpha = 1 - lr * wd
            bc2_sqrt = np.sqrt(1 - b2 ** count[i])
            p *= wd_alpha
            m[i] = lerp(m[i], g, 1 - b1)
            v[i] = lerp(v[i], g * g, 1 - b2)
            p -= step_size * np.arctan2(m[i], np.sqrt(v[i]) / bc2_sqrt)
        grads.append(step_grads)
        after.append([p.tolist() for p in params])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "source": "github.com/imoneoi/adam-atan2 42a1aeb38cd0838d42631b18369505e86e5bd3fe csrc/adam_atan2.cu "
                  "adam_math, float64 (scripts/adam_atan2_reference.py)",
        "groups": [{k: g[k] for k in ("lr", "betas", "weight_decay")} for g in GROUPS], "group_of": group_of,
        "init": init, "grads": grads, "after": after}, indent=None) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
