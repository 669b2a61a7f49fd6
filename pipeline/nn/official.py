"""Import official TRM checkpoints (SamsungSAILMontreal/TinyRecursiveModels layout): the state dict into our
model (the build's `identifiers.json` becomes our id table in pipeline/data/official_build.py). Every official
architecture imports (`official_arch` tells which one a state dict is; model.arch, pipeline/nn/arch.py).

Official checkpoints are `torch.save`d state dicts (possibly with `_orig_mod.`/`model.` prefixes from
torch.compile and the loss wrapper); they are read with `weights_only=True`, or from safetensors.

An official puzzle id names a task version: `TASK` (the original) or `TASK|||tD|||PERM`, dihedral D as in the
official dataset/common.py (the same numbering as kernels/dihedral.py) applied after the colour map PERM
(`PERM[c]` is the colour c became, 0 fixed: our perms' lookup-table convention). So every official row is a
(task, dihedral, colour map) of our PerAugmentationIds, and the imported table keeps each row's embedding.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from pipeline.nn.model import new_task_row

_COMMON = [
    (r"^inner\.H_init$", "y_init"),
    (r"^inner\.L_init$", "z_init"),
    (r"^inner\.embed_tokens\.embedding_weight$", "embed_tokens.weight"),
    (r"^inner\.embed_pos\.embedding_weight$", "embed_pos"),
    (r"^inner\.lm_head\.weight$", "lm_head.weight"),
    (r"^inner\.q_head\.(weight|bias)$", r"q_head.\1"),
    (r"^inner\.puzzle_emb\.weights$", "puzzle_emb"),
]


_PARTS = [("self_attn.qkv_proj", "attn.qkv"), ("self_attn.o_proj", "attn.out"), ("mlp.gate_up_proj", "mlp.gate_up"),
          ("mlp.down_proj", "mlp.down"), ("mlp_t.gate_up_proj", "mixer.gate_up"), ("mlp_t.down_proj", "mixer.down")]


def _blocks(level: str, ours: str) -> list[tuple[str, str]]:
    """The official network `level`'s blocks -> our ModuleList `ours`."""
    return [(rf"^inner\.{level}\.layers\.(\d+)\.{re.escape(part)}\.weight$", rf"{ours}.\1.{mine}.weight")
            for part, mine in _PARTS]


_RENAMES = _COMMON + _blocks("L_level", "blocks")
_ARCH_RENAMES = {
    "trm": _RENAMES, "trm_singlez": _RENAMES,
    "hrm": _RENAMES + _blocks("H_level", "h_blocks"),
    "transformers_baseline": _COMMON + _blocks("H_level", "blocks"),  # its one network: our blocks
    "trm_hier6": _RENAMES + [(r"^inner\.L([1-6])_init$", r"z\1_init")],  # the six latent pieces' initial states
}
"""Official name -> ours, per architecture (model.arch)."""
_SKIP = re.compile(r"rotary_emb\.|_cached$")


class OfficialImportError(ValueError):
    """An official checkpoint that does not fit the configured model; the message names the tensor."""


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {re.sub(r"^(_orig_mod\.)?(model\.)?(_orig_mod\.)?", "", k): v for k, v in state.items()}


def official_arch(official: dict[str, torch.Tensor]) -> str:
    """Which official architecture a state dict is (model.arch), from the tensors it has."""
    if "inner.L1_init" in official:
        return "trm_hier6"
    if any(k.startswith("inner.H_level.") for k in official):
        return "hrm" if any(k.startswith("inner.L_level.") for k in official) else "transformers_baseline"
    return "trm" if "inner.H_init" in official else "trm_singlez"


def convert_state_dict(official: dict[str, torch.Tensor], arch: str = "trm") -> dict[str, torch.Tensor]:
    """Official names -> ours for architecture `arch` (model.arch)."""
    out = {}
    for name, tensor in official.items():
        if _SKIP.search(name):
            continue
        for pat, rep in _ARCH_RENAMES[arch]:
            if re.match(pat, name):
                out[re.sub(pat, rep, name)] = tensor.float()
                break
        else:
            raise OfficialImportError(f"official tensor '{name}' has no counterpart in this model")
    return out


def config_overrides(official: dict[str, torch.Tensor]) -> dict:
    """Model-config facts readable from the tensors themselves (the rest, heads and cycles, are not): the
    architecture, sizes, layers (HRM: of each network), and HRM's and the baseline's puzzle prefix length."""
    arch = official_arch(official)

    def count(level: str) -> int:
        return len({int(m.group(1)) for k in official if (m := re.match(rf"inner\.{level}\.layers\.(\d+)\.", k))})

    vocab, hidden = official["inner.embed_tokens.embedding_weight"].shape
    out = {"arch": arch, "hidden": int(hidden), "vocab_size": int(vocab),
           "layers": count("H_level" if arch == "transformers_baseline" else "L_level"),
           "h_layers": count("H_level") if arch == "hrm" else None,
           "mlp_t": any(".mlp_t." in k for k in official),
           "pos_encodings": "learned" if "inner.embed_pos.embedding_weight" in official else None}
    if "inner.puzzle_emb.weights" in official:
        out["puzzle_emb_ndim"] = int(official["inner.puzzle_emb.weights"].shape[1])
    if arch in ("hrm", "transformers_baseline"):  # their classes derive it (ModelConfig checks)
        out["puzzle_emb_len"] = -(-out.get("puzzle_emb_ndim", 0) // int(hidden))
    return {k: v for k, v in out.items() if v is not None}


def load_official_into(model: torch.nn.Module, official: dict[str, torch.Tensor]) -> None:
    """Copy an official state dict into `model`; every tensor must match by name and shape.
    The puzzle table may differ in rows (new tasks): then every row starts at new_task_row(official table)."""
    ours = convert_state_dict(official, model.cfg.arch)
    own = model.state_dict()
    missing = sorted(set(own) - set(ours))
    if missing:
        raise OfficialImportError(f"official checkpoint lacks tensors for: {', '.join(missing)}")
    for k, v in ours.items():
        if k not in own:
            raise OfficialImportError(f"official tensor for '{k}' has no place in the configured model")
        if k == "puzzle_emb" and v.shape[0] != own[k].shape[0] and v.shape[1:] == own[k].shape[1:]:
            ours[k] = new_task_row(v).expand_as(own[k]).clone()
        elif v.shape != own[k].shape:
            raise OfficialImportError(f"'{k}': official shape {tuple(v.shape)} != configured {tuple(own[k].shape)}")
    model.load_state_dict(ours, strict=True)
