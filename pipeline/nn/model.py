"""The Tiny Recursive Model (Jolicoeur-Martineau 2025, "Less is More: Recursive Reasoning with Tiny Networks").

One small network (2 post-norm blocks) is applied recursively. One supervision step, from carried (y, z):
    repeat T times:  repeat n times: z = net(z, x + y);   then y = net(y, z)
where only the last of the T cycles is back-propagated. Logits come from y (the puzzle-embedding prefix
positions dropped), the halting logit from y at position 0. The numerics follow the official code
(../shared/docs/trm-reference.md section 3) so official checkpoints import exactly (pipeline/nn/official.py).

The official repository's other architectures (HRM, single-z, hier6, the transformer baseline) subclass TRM
(pipeline/nn/arch.py, `model.arch`): they share its embeddings, heads, crop and step, and replace `recurse`
and the initial states.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ComputeConfig, ModelConfig
from pipeline.nn.crop import Crop


def new_task_row(table: torch.Tensor) -> torch.Tensor:
    """The puzzle-embedding row a task the table does not know starts from: the mean of the whole stored
    table, the blank row 0 included, as the official loader re-initialises a table of another size
    (pretrain.py L244-262). TTT's rows (all of them unless train.keep_known_rows) and prediction's unknown
    tasks use it."""
    return table.mean(0)


def swiglu_width(hidden: int, expansion: float) -> int:
    inner = round(expansion * hidden * 2 / 3)
    return -(-inner // 256) * 256


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    # No learnable weight; computed in fp32 as in TRM.
    dtype = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)).to(dtype)


def trunc_normal_(w: torch.Tensor, std: float) -> torch.Tensor:
    # Truncated at +-2 sigma; sigma is corrected so that the result has standard deviation `std`.
    sigma = std / 0.87962566103423978
    return nn.init.trunc_normal_(w, std=sigma, a=-2 * sigma, b=2 * sigma)


def _linear(fan_in: int, fan_out: int, bias: bool = False) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out, bias=bias)
    trunc_normal_(layer.weight.data, 1.0 / math.sqrt(fan_in))
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class SwiGLU(nn.Module):
    def __init__(self, width: int, expansion: float):
        super().__init__()
        inner = swiglu_width(width, expansion)
        self.gate_up = _linear(width, 2 * inner)
        self.down = _linear(inner, width)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        width = heads * self.head_dim  # = hidden, but for the baseline's official 12 heads on 512 (504)
        self.qkv = _linear(hidden, 3 * width)
        self.out = _linear(width, hidden)

    def forward(self, x, rope, mask=None):
        """`mask` [B, 1, 1, S] bool: the keys each example may attend to (compute.crop), None = all."""
        B, S, _ = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, self.head_dim).unbind(2)
        if rope is not None:
            # Rotated in float32 and rounded back, as the official forward; a float32 residual stream under bf16
            # autocast (compute.carry=float32) rotates in bf16, as the project did before that setting.
            out, rot = q.dtype, torch.float32 if x.dtype == q.dtype else q.dtype
            cos, sin = rope[0].to(rot)[:, None], rope[1].to(rot)[:, None]
            q, k = q.to(rot), k.to(rot)
            q, k = (q * cos + rotate_half(q) * sin).to(out), (k * cos + rotate_half(k) * sin).to(out)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(B, S, -1))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.eps, self.mlp_t = cfg.rms_norm_eps, cfg.mlp_t
        if cfg.mlp_t:
            self.mixer = SwiGLU(cfg.total_len, cfg.expansion)
        else:
            self.attn = Attention(cfg.hidden, cfg.heads)
        self.mlp = SwiGLU(cfg.hidden, cfg.expansion)

    def forward(self, h, rope, mask=None):
        if self.mlp_t:
            t = h.transpose(1, 2)
            h = rms_norm(t + self.mixer(t), self.eps).transpose(1, 2)
        else:
            h = rms_norm(h + self.attn(h, rope, mask), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class TRM(nn.Module):
    """The recursive trunk plus embeddings and heads. The puzzle table is a buffer: it is trained by its own
    sparse sign-SGD optimiser (pipeline/training/optim.py), never by AdamW or EMA, as in TRM. `compute` says how it
    computes (compute.crop, crop_groups, compile), which never changes the weights."""

    def __init__(self, cfg: ModelConfig, num_puzzle_ids: int, compute: ComputeConfig | None = None):
        super().__init__()
        self.cfg, self.compute = cfg, compute or ComputeConfig()
        self.compute.check(cfg)
        h = cfg.hidden
        self.embed_scale = math.sqrt(h)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h)
        trunc_normal_(self.embed_tokens.weight.data, 1.0 / self.embed_scale)
        if cfg.pos_encodings == "learned":
            self.embed_pos = nn.Parameter(trunc_normal_(torch.empty(cfg.total_len, h), 1.0 / self.embed_scale))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        if cfg.h_layers:  # a separate network for y (HRM's H network; TRM's "separate f_H, f_L" ablation)
            self.h_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.h_layers))
        self.lm_head = _linear(h, cfg.vocab_size)
        self.q_head = nn.Linear(h, 2, bias=True)
        with torch.no_grad():  # start by never halting: logit -5 (as TRM)
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)
        self._init_states(h)
        self.register_buffer("puzzle_emb", torch.zeros(num_puzzle_ids, cfg.puzzle_emb_ndim))
        if cfg.pos_encodings == "rope":
            head_dim = h // cfg.heads
            inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
            freqs = torch.outer(torch.arange(cfg.total_len, dtype=torch.float32), inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.register_buffer("rope_cos", emb.cos(), persistent=False)
            self.register_buffer("rope_sin", emb.sin(), persistent=False)

    def _init_states(self, h: int) -> None:
        """The initial (y, z) vectors (official H_init, L_init); an architecture that carries other states
        registers its own."""
        self.register_buffer("y_init", trunc_normal_(torch.empty(h), 1.0))
        self.register_buffer("z_init", trunc_normal_(torch.empty(h), 1.0))

    # -- pieces -------------------------------------------------------------------------------------
    def keep_index(self, rows: int, cols: int) -> torch.Tensor:
        """Sequence positions (prefix first) of the canvas rectangle [0:rows, 0:cols], numbered as on the full
        canvas: prefix p -> p, cell (r, c) -> puzzle_emb_len + r * canvas + c. A fresh tensor each call (a
        compiled step guards on aliasing between its inputs); under crop the whole canvas is a rectangle
        like any other (its positions skip the gather in `_step`)."""
        canvas = self.canvas
        P = self.cfg.puzzle_emb_len
        cells = (torch.arange(rows)[:, None] * canvas + torch.arange(cols)[None, :]).flatten()
        return torch.cat((torch.arange(P), P + cells)).to(self.y_init.device, non_blocking=True)

    def embed(self, inputs: torch.Tensor, puzzle_vecs: torch.Tensor | None, keep: torch.Tensor | None = None,
              dtype: torch.dtype = torch.float32):
        """Token + puzzle-prefix embedding of `inputs` (the grid tokens at positions keep[P:] when cropped), in
        `dtype` (the carry's): the tables are cast before they are looked up, added and scaled, as the official
        forward (so the token table's gradient is also summed in `dtype`)."""
        x = F.embedding(inputs.long(), self.embed_tokens.weight.to(dtype))
        P = self.cfg.puzzle_emb_len
        if P:
            B = inputs.shape[0]
            if puzzle_vecs is None or self.cfg.puzzle_emb_ndim == 0:
                prefix = x.new_zeros(B, P, self.cfg.hidden)
            else:
                flat = F.pad(puzzle_vecs.to(x.dtype), (0, P * self.cfg.hidden - puzzle_vecs.shape[-1]))
                prefix = flat.view(B, P, self.cfg.hidden)
            x = torch.cat((prefix, x), dim=1)
        if self.cfg.pos_encodings == "learned":
            pos = self.embed_pos if keep is None else self.embed_pos[keep]
            x = 0.707106781 * (x + pos.to(x.dtype))
        return self.embed_scale * x

    def net(self, h: torch.Tensor, injection: torch.Tensor, rope=None, mask=None) -> torch.Tensor:
        h = h + injection
        for blk in self.blocks:
            h = blk(h, rope, mask)
        return h

    def h_net(self, h: torch.Tensor, injection: torch.Tensor, rope=None, mask=None) -> torch.Tensor:
        """The y update's network: the shared one, or the separate one of model.h_layers."""
        if not self.cfg.h_layers:
            return self.net(h, injection, rope, mask)
        h = h + injection
        for blk in self.h_blocks:
            h = blk(h, rope, mask)
        return h

    def _cycle(self, x, y, z, rope, mask=None):
        for _ in range(self.cfg.l_cycles):
            z = self.net(z, y + x, rope, mask)
        return self.h_net(y, z, rope, mask), z

    def initial_state(self, batch_size: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch_size, self.cfg.total_len, -1)  # each state as wide as its init vector
        return self.y_init.to(dtype).expand(shape).clone(), self.z_init.to(dtype).expand(shape).clone()

    def reset_state(self, y, z, reset: torch.Tensor):
        """Slots where `reset` is True go back to the initial (y, z)."""
        r = reset.view(-1, 1, 1)
        return torch.where(r, self.y_init.to(y.dtype), y), torch.where(r, self.z_init.to(z.dtype), z)

    # -- one supervision step -------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, puzzle_vecs: torch.Tensor | None, y: torch.Tensor, z: torch.Tensor,
                crop=None):
        """One deep-supervision step from input tokens [B, seq_len], puzzle vectors [B, ndim] and carried
        (y, z) [B, total_len, hidden]. Embedding happens here so that DDP/DeepSpeed see every parameter used
        in forward().

        `crop` (compute.crop): a `Crop` (positions of the canvas rectangle covering the batch, as
        `keep_index(rows, cols)`: a tensor, so a compiled step takes every size without recompiling, and
        each example's own rectangle within it). Each example attends only to its own rectangle and the
        prefix; (y, z) change only there, and its logits elsewhere are 0 (argmax PAD; callers crop so that
        every label outside is ignored): exactly what the example computes alone, whatever its batch mates.
        `crop=[(slots, Crop), ...]` runs each group of slots (index tensors covering the batch once) on its
        own rectangle (compute.crop_groups). Under crop the step compiled is `_step` (runtime.compile_model),
        once per group, with index tensors of dynamic length.

        Returns (y, z) detached for the next step, logits [B, seq_len, vocab], and the fp32 halting
        logits (q_halt, q_continue)."""
        if isinstance(crop, list):
            parts = [self._step(inputs[s], None if puzzle_vecs is None else puzzle_vecs[s], y[s], z[s], c.keep,
                                c.own) for s, c in crop]
            order = torch.cat([s for s, _ in crop])
            back = torch.empty_like(order)
            back[order] = torch.arange(len(order), device=order.device)
            return tuple(torch.cat([p[i] for p in parts])[back] for i in range(5))
        if crop is None:
            return self._step(inputs, puzzle_vecs, y, z, None)
        return self._step(inputs, puzzle_vecs, y, z, crop.keep, crop.own)

    def recurse(self, x, y, z, rope, mask=None):
        """The recursion of one supervision step from the embedded input x and carried (y, z): the new (y, z)
        and the state the heads read (TRM: y)."""
        if self.cfg.one_step_grad:
            return self._recurse_one_step(x, y, z, rope, mask)
        with torch.no_grad():
            for _ in range(self.cfg.h_cycles - 1):
                y, z = self._cycle(x, y, z, rope, mask)
        y, z = self._cycle(x, y, z, rope, mask)
        return y, z, y

    def _recurse_one_step(self, x, y, z, rope, mask=None):
        """The 1-step gradient (HRM's, official hrm.py L204-215): every update without gradients but the last z
        and the last y update."""
        with torch.no_grad():
            for _ in range(self.cfg.h_cycles - 1):
                y, z = self._cycle(x, y, z, rope, mask)
            for _ in range(self.cfg.l_cycles - 1):
                z = self.net(z, y + x, rope, mask)
        z = self.net(z, y + x, rope, mask)
        y = self.h_net(y, z, rope, mask)
        return y, z, y

    def _step(self, inputs, puzzle_vecs, y, z, keep, own=None):
        rope = None
        if self.cfg.pos_encodings == "rope":
            rope = (self.rope_cos, self.rope_sin)
        if keep is not None and keep.shape[0] == self.cfg.total_len:
            keep = None  # the whole canvas: no gather (`own`, if any, is in canvas order already)
        if keep is not None:
            inputs = inputs[:, keep[self.cfg.puzzle_emb_len:] - self.cfg.puzzle_emb_len]
            rope = (rope[0][keep], rope[1][keep]) if rope is not None else None
            y_all, z_all, y, z = y, z, y[:, keep], z[:, keep]
        y_in, z_in = y, z
        mask = None if own is None else own[:, None, None, :]  # the keys of each example's own rectangle
        x = self.embed(inputs, puzzle_vecs, keep, y.dtype)  # the carry's dtype is the forward's (compute.carry)
        y, z, out = self.recurse(x, y, z, rope, mask)
        logits = self.lm_head(out)[:, self.cfg.puzzle_emb_len:]
        q = self.q_head(out[:, 0]).float()
        y, z = y.detach(), z.detach()
        if own is not None:  # outside its own rectangle an example stays as it would alone: untouched, logits 0
            inside = own[..., None]
            y, z = torch.where(inside, y, y_in), torch.where(inside, z, z_in)
            logits = torch.where(inside[:, self.cfg.puzzle_emb_len:], logits, 0)
        if keep is not None:  # back onto the full canvas
            cells = keep[self.cfg.puzzle_emb_len:] - self.cfg.puzzle_emb_len
            full = logits.new_zeros(logits.shape[0], self.cfg.seq_len, logits.shape[-1])
            logits = full.index_copy(1, cells, logits)
            y, z = y_all.index_copy(1, keep, y), z_all.index_copy(1, keep, z)
        return y, z, logits, q[..., 0], q[..., 1]

    @property
    def canvas(self) -> int:
        return math.isqrt(self.cfg.seq_len)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_step(self, batch: int, seq_len: int | None = None, train: bool = True) -> float:
        """Model FLOPs of one training supervision step (forward of all cycles, backward of the last; with
        train=False the forward alone, a prediction step), counting matmuls only, for MFU; `seq_len` grid tokens
        instead of the canvas (a crop rectangle). Under crop the MFU printed while training counts the full
        canvas, an upper bound."""
        c = self.cfg
        y_net = c.h_layers or c.layers
        per_cycle = c.l_cycles * c.layers + y_net
        graded = c.layers + y_net if c.one_step_grad else per_cycle
        return step_flops(c, batch, seq_len, c.h_cycles * per_cycle, graded if train else 0)


def step_flops(c: ModelConfig, batch: int, seq_len: int | None, blocks: int, graded: int) -> float:
    """FLOPs (matmuls) of a training step that runs `blocks` block calls forward, `graded` of them with
    gradients (0: a prediction step), and the output head; `seq_len` as TRM.flops_per_step."""
    S, h = (c.total_len if seq_len is None else seq_len + c.puzzle_emb_len), c.hidden
    a = c.heads * (h // c.heads)  # attention width (= h where heads divide it)
    inner = swiglu_width(h, c.expansion)
    per_block = 2 * S * (3 * h * a + a * h + 3 * h * inner)  # qkv, out, SwiGLU
    per_block += 0 if c.mlp_t else 4 * S * S * a  # QK^T and AV
    if c.mlp_t:
        per_block += 2 * h * 3 * S * swiglu_width(S, c.expansion)
    fwd = blocks * per_block + 2 * S * h * c.vocab_size
    if graded and c.continue_loss and c.halting and c.halt_max_steps > 1:  # training's Q-continue target: a second forward
        fwd *= 2  # (pipeline/nn/act.py continue_target)
    return batch * (fwd + 2 * graded * per_block)  # backward ~ 2x forward of the graded blocks
