"""Reference outputs of the official TRM code run in bfloat16 (its `forward_dtype`, the default it trains with) on
the weights of ../shared/fixtures/trm_official_tiny, for tests/test_bf16_official.py. Written to
tests/data/trm_official_tiny_bf16.safetensors (committed, ~0.8 MB):

    git -C /work/.mirror/SamsungSAILMontreal+TinyRecursiveModels/repo archive e7b6871 | tar -x -C /tmp/trm_official
    OMP_NUM_THREADS=1 .venv/bin/python scripts/official_bf16_reference.py /tmp/trm_official

The official code is imported from the checkout named on the command line (SamsungSAILMontreal/
TinyRecursiveModels, commit e7b6871; nothing of it is copied here): its ACT wrapper
`TinyRecursiveReasoningModel_ACTV1` with the fixture's config but forward_dtype=bfloat16, and its
`ACTLossHead(..., "stablemax_cross_entropy")` for the training step, on CPU. At e7b6871 models/layers.py already
calls torch's scaled_dot_product_attention (its flash-attn import is commented out); for a checkout that imports
`flash_attn_interface` or `flash_attn`, `shim_flash_attention` registers modules of those names whose
`flash_attn_func(q, k, v, causal)` ([B, S, H, D]) is SDPA, so the layers import without the CUDA package.
The fixture's weights are float32; loading them into the bf16 model rounds H_init/L_init (bf16 buffers there),
as loading any float32 state would.

Tensors (bf16 where the official code makes them bf16, float32 otherwise):
- `eval.stepK.logits` [6, 900, 12] bf16, `eval.stepK.q_halt_logits` [6] float32, K = 1..4: evaluation mode from a
  fresh carry (every slot halted, so reset to H_init/L_init), the carry passed from step to step;
- `eval.step1.z_H`, `eval.step1.z_L` [1, 902, 64] bf16: the carried states of slot 0 after step 1 (one slot keeps
  the file small);
- `train.step1.*`: one training-mode step from a fresh carry: `loss`, `lm_loss`, `q_halt_loss`, `exact_accuracy`,
  `count`, `steps`, `halted`, and the gradients of `loss` of the small tensors (`grad.inner.lm_head.weight`,
  `grad.inner.q_head.weight`, `grad.inner.q_head.bias`, `grad.inner.embed_tokens.embedding_weight`,
  `grad.puzzle_emb.local_weights` [6, 64]).
- `learned48.*`: a second, random model with what the fixture cannot show (its embedding scale sqrt(64) = 8 is a
  power of two, so rounding before or after scaling agree): hidden 48 (scale sqrt(48)), learned positions, one
  layer; every tensor random and rounded to bf16 (`learned48.weights.NAME`, official names: the bf16 forward casts
  them anyway), a batch (`learned48.inputs`, `.labels`, `.puzzle_identifiers`), its config in the file's
  metadata (`learned48_config`), and the same outputs: `learned48.eval.stepK.logits`/`.q_halt_logits` for
  K = 1..3 and `learned48.train.step1.loss`.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "trm_official_tiny"
OUT = ROOT / "tests" / "data" / "trm_official_tiny_bf16.safetensors"
LEARNED48 = {"batch_size": 4, "seq_len": 36, "puzzle_emb_ndim": 48, "num_puzzle_identifiers": 5, "vocab_size": 12,
             "H_cycles": 2, "L_cycles": 2, "H_layers": 0, "L_layers": 1, "hidden_size": 48, "expansion": 4,
             "num_heads": 3, "pos_encodings": "learned", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "halt_max_steps": 3, "halt_exploration_prob": 0.0, "mlp_t": False, "puzzle_emb_len": 2,
             "no_ACT_continue": True}
SMALL_GRADS = ("inner.lm_head.weight", "inner.q_head.weight", "inner.q_head.bias",
               "inner.embed_tokens.embedding_weight")


def shim_flash_attention() -> None:
    """`flash_attn_interface` / `flash_attn` modules whose flash_attn_func is torch's SDPA (CPU has no flash-attn)."""
    def flash_attn_func(q, k, v, causal=False, **_):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
        return out.transpose(1, 2)

    for name in ("flash_attn_interface", "flash_attn"):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.flash_attn_func = flash_attn_func
            sys.modules[name] = mod


def official_model(checkout: Path, config: dict, weights: dict):
    """The official ACT wrapper (forward_dtype=bfloat16) and its loss head, with `weights` (official names)."""
    shim_flash_attention()
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from models.losses import ACTLossHead
    from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1

    model = TinyRecursiveReasoningModel_ACTV1({**config, "forward_dtype": "bfloat16"})
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not k.startswith("inner.puzzle_emb.local_") for k in missing):
        raise SystemExit(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return model, ACTLossHead(model, "stablemax_cross_entropy")


def run(model, head, batch: dict, eval_steps: int, out: dict, prefix: str = "", slot0_carry: bool = True) -> float:
    """`eval_steps` evaluation steps from a fresh carry, then one training step from a fresh carry (its loss,
    metrics and which slots halted; the gradients are left in the model), into `out`. Returns the loss."""
    model.eval()
    with torch.no_grad():
        carry = model.initial_carry(batch)
        for k in range(1, eval_steps + 1):
            carry, o = model(carry=carry, batch=batch)
            out[f"{prefix}eval.step{k}.logits"] = o["logits"].contiguous()
            out[f"{prefix}eval.step{k}.q_halt_logits"] = o["q_halt_logits"].contiguous()
            if k == 1 and slot0_carry:
                out[f"{prefix}eval.step1.z_H"] = carry.inner_carry.z_H[:1].contiguous()
                out[f"{prefix}eval.step1.z_L"] = carry.inner_carry.z_L[:1].contiguous()
    head.train()
    carry, loss, metrics, _, _ = head(return_keys=[], carry=head.initial_carry(batch), batch=batch)
    loss.backward()
    out[f"{prefix}train.step1.loss"] = loss.detach().reshape(1)
    for name in ("lm_loss", "q_halt_loss", "exact_accuracy", "count", "steps"):
        out[f"{prefix}train.step1.{name}"] = metrics[name].detach().reshape(1)
    out[f"{prefix}train.step1.halted"] = carry.halted.to(torch.int32)
    return loss.item()


def learned48_case(gen: torch.Generator) -> tuple[dict, dict]:
    """Random official-named weights (bf16) and a batch for LEARNED48."""
    c, h = LEARNED48, LEARNED48["hidden_size"]
    inter = -(round(c["expansion"] * h * 2 / 3) // -256) * 256
    shapes = {"inner.H_init": ([h], 1.0), "inner.L_init": ([h], 1.0),
              "inner.embed_tokens.embedding_weight": ([c["vocab_size"], h], h ** -0.5),
              "inner.embed_pos.embedding_weight": ([c["seq_len"] + c["puzzle_emb_len"], h], h ** -0.5),
              "inner.lm_head.weight": ([c["vocab_size"], h], h ** -0.5),
              "inner.q_head.weight": ([2, h], h ** -0.5), "inner.q_head.bias": ([2], 1.0),
              "inner.puzzle_emb.weights": ([c["num_puzzle_identifiers"], c["puzzle_emb_ndim"]], h ** -0.5),
              "inner.L_level.layers.0.self_attn.qkv_proj.weight": ([3 * h, h], h ** -0.5),
              "inner.L_level.layers.0.self_attn.o_proj.weight": ([h, h], h ** -0.5),
              "inner.L_level.layers.0.mlp.gate_up_proj.weight": ([2 * inter, h], h ** -0.5),
              "inner.L_level.layers.0.mlp.down_proj.weight": ([h, inter], inter ** -0.5)}
    weights = {k: (torch.randn(s, generator=gen) * std).to(torch.bfloat16) for k, (s, std) in shapes.items()}
    B, S = c["batch_size"], c["seq_len"]
    inputs = torch.randint(0, c["vocab_size"], (B, S), generator=gen, dtype=torch.int32)
    labels = torch.randint(2, c["vocab_size"], (B, S), generator=gen, dtype=torch.int32)
    labels[torch.rand(B, S, generator=gen) < 0.3] = -100
    ids = torch.randint(1, c["num_puzzle_identifiers"], (B,), generator=gen, dtype=torch.int32)
    batch = {"inputs": inputs, "labels": labels, "puzzle_identifiers": ids}
    return weights, batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkout", type=Path, help="a checkout of the official repository (commit e7b6871)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    config = json.loads((FIXTURE / "fixture.json").read_text())["config"]
    model, head = official_model(args.checkout, config, load_file(str(FIXTURE / "weights.safetensors")))
    batch = load_file(str(FIXTURE / "batch.safetensors"))
    out = {}
    loss = run(model, head, batch, 4, out)
    params = dict(model.named_parameters())
    for name in SMALL_GRADS:
        out[f"train.step1.grad.{name}"] = params[name].grad.contiguous()
    out["train.step1.grad.puzzle_emb.local_weights"] = model.inner.puzzle_emb.local_weights.grad.contiguous()

    weights, batch48 = learned48_case(torch.Generator().manual_seed(48))
    model48, head48 = official_model(args.checkout, LEARNED48, {k: v.float() for k, v in weights.items()})
    run(model48, head48, batch48, LEARNED48["halt_max_steps"], out, "learned48.", slot0_carry=False)
    out.update({f"learned48.weights.{k}": v for k, v in weights.items()})
    out.update({f"learned48.{k}": v for k, v in batch48.items()})

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(args.out), metadata={"source": "SamsungSAILMontreal/TinyRecursiveModels e7b6871",
                                            "forward_dtype": "bfloat16", "device": "cpu", "torch": torch.__version__,
                                            "learned48_config": json.dumps(LEARNED48)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), train loss {loss:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
