"""The registry of architectures (`model.arch` -> class): every place that builds a model from a config
(training, checkpoint loading, the official import) builds it here. All subclass TRM (pipeline/nn/model.py)
and keep its interface: forward(inputs, puzzle_vecs, y, z, crop) -> (y, z, logits, q_halt, q_continue), their
carried states packed into the two tensors y and z.
"""
from __future__ import annotations

from pipeline.config import ComputeConfig, ModelConfig
from pipeline.nn.hrm import HRM
from pipeline.nn.model import TRM
from pipeline.nn.transformer_baseline import TransformerBaseline
from pipeline.nn.trm_hier6 import TRMHier6
from pipeline.nn.trm_singlez import TRMSingleZ

ARCHS: dict[str, type[TRM]] = {"trm": TRM, "hrm": HRM, "trm_singlez": TRMSingleZ, "trm_hier6": TRMHier6,
                               "transformers_baseline": TransformerBaseline}


def build_model(cfg: ModelConfig, num_puzzle_ids: int, compute: ComputeConfig | None = None) -> TRM:
    return ARCHS[cfg.arch](cfg, num_puzzle_ids, compute)
