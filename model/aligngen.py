"""AlignGen's learned parts: the Deviation Extraction Module, selective cross-modal attention and
reference-only LoRA.

AlignGen ("Cross-Modality Prior Alignment for Personalized Image Generation", shared/papers/aligngen.txt;
details restored in shared/notes/syncd-aligngen.md) has no public code or weights: everything here is
defined by the paper and by us, and the train/ sidecar produces the weights.

- DEM: a learnable token S* sits before the concept name. The T5 rows of S* and of the name
  (c_concept, [B, 1 + l, D]) go through self-attention, cross-attention to the Redux tokens of the
  reference, and an MLP; only the first output row (S*') replaces S* in the prompt
  (`replace_learned_token`): replacing the name's rows too causes concept drift (paper Fig. 7).
- Selective cross-modal attention: in the joint attention, text tokens that are not concept tokens
  may not attend to the reference image tokens; everything else is unchanged.
- Reference-only LoRA: the DiT is shared by noisy and reference tokens, with a LoRA on the
  reference tokens only. They are the trailing rows of every sequence a FLUX Linear sees.

Pure torch: nothing here imports ComfyUI. Attention tensors are [B, H, L, D] (batch, heads, tokens, head dim).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class DEMAttention(nn.Module):
    """Multi-head attention of `dim`-wide queries over `kv_dim`-wide keys/values, as nn.MultiheadAttention
    computes it (biased q/k/v/out projections, softmax(q k^T / sqrt(d)) v), but built from leaf Linears.

    Leaf Linears matter under ComfyUI: its loader moves, casts and offloads weights module by module and
    skips a module whose parameters sit in children too (nn.MultiheadAttention keeps `in_proj_weight` beside
    its `out_proj` child, so a partial load would leave it behind). `operations` supplies Linear (torch.nn,
    or ComfyUI's comfy.ops.manual_cast for weights cast per forward).
    """

    def __init__(self, dim: int, kv_dim: int, heads: int, operations=nn, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.heads = heads
        self.to_q = operations.Linear(dim, dim, **factory)
        self.to_k = operations.Linear(kv_dim, dim, **factory)
        self.to_v = operations.Linear(kv_dim, dim, **factory)
        self.to_out = operations.Linear(dim, dim, **factory)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x [B, N, dim], context [B, M, kv_dim] -> [B, N, dim]."""
        def heads(t):  # [B, L, H d] -> [B, H, L, d]
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.to_q(x)), heads(self.to_k(context)), heads(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).flatten(-2))


def dem_state_dict_from_multihead(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DEM state dict in the current layout, from either layout.

    Files exported before the DEM had leaf Linears (format version 1) hold nn.MultiheadAttention's keys:
    `self_attn.in_proj_weight` [3E, E] (q|k|v packed), `cross_attn.{q,k,v}_proj_weight` (kdim != E), the
    packed `in_proj_bias` [3E] and `out_proj.{weight,bias}`. They become `to_q/to_k/to_v/to_out` Linears,
    the same numbers. A state dict in the current layout comes back unchanged.
    """
    out = dict(state_dict)
    for attn in ("self_attn", "cross_attn"):
        packed = out.pop(f"{attn}.in_proj_weight", None)
        weights = packed.chunk(3) if packed is not None else [out.pop(f"{attn}.{n}_proj_weight", None) for n in "qkv"]
        bias = out.pop(f"{attn}.in_proj_bias", None)
        biases = bias.chunk(3) if bias is not None else [None] * 3
        for name, weight, b in zip(("to_q", "to_k", "to_v"), weights, biases, strict=True):
            if weight is not None:
                out[f"{attn}.{name}.weight"] = weight
            if b is not None:
                out[f"{attn}.{name}.bias"] = b
        for part in ("weight", "bias"):
            value = out.pop(f"{attn}.out_proj.{part}", None)
            if value is not None:
                out[f"{attn}.to_out.{part}"] = value
    return out


class DeviationExtractionModule(nn.Module):
    """c' = c + SelfAttn(c); c' = c' + CrossAttn(c', redux); c' = c' + MLP(c'), each sublayer pre-norm.

    `operations` supplies Linear and LayerNorm (torch.nn by default; ComfyUI passes its manual-cast ops so
    its model management can offload the ~270M parameters and cast them per forward).
    """

    def __init__(self, text_dim: int, redux_dim: int, heads: int, mlp_ratio: float = 4.0, operations=nn,
                 device=None, dtype=None):
        super().__init__()
        if heads < 1 or text_dim % heads:
            raise ValueError(f"text_dim {text_dim} must be divisible by heads {heads}")
        hidden = int(text_dim * mlp_ratio)
        if hidden < 1:
            raise ValueError(f"mlp_ratio {mlp_ratio} gives an empty MLP for text_dim {text_dim}")
        factory = {"operations": operations, "device": device, "dtype": dtype}
        self.heads, self.mlp_ratio = heads, mlp_ratio
        self.norm_self = operations.LayerNorm(text_dim, device=device, dtype=dtype)
        self.self_attn = DEMAttention(text_dim, text_dim, heads, **factory)
        self.norm_cross = operations.LayerNorm(text_dim, device=device, dtype=dtype)
        self.norm_redux = operations.LayerNorm(redux_dim, device=device, dtype=dtype)
        self.cross_attn = DEMAttention(text_dim, redux_dim, heads, **factory)
        self.norm_mlp = operations.LayerNorm(text_dim, device=device, dtype=dtype)
        self.mlp = nn.Sequential(operations.Linear(text_dim, hidden, device=device, dtype=dtype),
                                 nn.GELU(approximate="tanh"),
                                 operations.Linear(hidden, text_dim, device=device, dtype=dtype))
        if self.norm_self.weight.device.type != "meta":  # from_state_dict builds on meta: nothing to draw
            self.reset_parameters()
        self.register_load_state_dict_pre_hook(_accept_multihead_layout)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nn.MultiheadAttention's initialisation (xavier-uniform projections, zero biases), with the output
        projections zeroed: a fresh DEM is the identity (S*' = S*), so training starts from the plain learned
        token and the frozen FLUX sees an in-distribution prompt on step one."""
        for attn in (self.self_attn, self.cross_attn):
            for layer in (attn.to_q, attn.to_k, attn.to_v):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        for layer in self.output_layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def output_layers(self) -> tuple[nn.Module, ...]:
        """The three zero-initialised projections whose outputs are added to the residual stream."""
        return self.self_attn.to_out, self.cross_attn.to_out, self.mlp[2]

    @property
    def config(self) -> dict:
        return {"text_dim": self.norm_self.normalized_shape[0], "redux_dim": self.norm_redux.normalized_shape[0],
                "heads": self.heads, "mlp_ratio": self.mlp_ratio}

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], heads: int, mlp_ratio: float = 4.0,
                        operations=nn, dtype: torch.dtype | None = None) -> DeviationExtractionModule:
        """Rebuild from saved tensors (e.g. a safetensors file, either layout); the widths come from the norms'
        weights. `dtype` casts the tensors (default: as stored); `operations` as in the constructor."""
        state_dict = dem_state_dict_from_multihead(state_dict)
        for key in ("norm_self.weight", "norm_redux.weight"):
            if key not in state_dict:
                raise ValueError(f"not a DEM state dict: missing key {key!r}")
        text_dim, redux_dim = state_dict["norm_self.weight"].shape[0], state_dict["norm_redux.weight"].shape[0]
        module = cls(text_dim, redux_dim, heads, mlp_ratio, operations=operations, device="meta")  # no throwaway init
        _check_state_dict(module.state_dict(), state_dict, "DEM state dict",
                          f"DEM state dict shapes do not match (heads={heads}, mlp_ratio={mlp_ratio})")
        if dtype is not None:
            state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
        module.load_state_dict(state_dict, assign=True)
        return module

    def forward(self, concept_tokens: torch.Tensor, redux_tokens: torch.Tensor) -> torch.Tensor:
        """concept_tokens [B, 1 + l, text_dim] (row 0 is S*), redux_tokens [B or 1, R, redux_dim] -> like concept_tokens."""
        config = self.config
        if concept_tokens.ndim != 3 or concept_tokens.shape[1] < 1 or concept_tokens.shape[2] != config["text_dim"]:
            raise ValueError(f"concept_tokens must be [B, 1 + l, {config['text_dim']}], got {list(concept_tokens.shape)}")
        if redux_tokens.ndim != 3 or redux_tokens.shape[1] < 1 or redux_tokens.shape[2] != config["redux_dim"]:
            raise ValueError(f"redux_tokens must be [B, R, {config['redux_dim']}], got {list(redux_tokens.shape)}")
        batch = concept_tokens.shape[0]
        if redux_tokens.shape[0] not in (1, batch):
            raise ValueError(f"redux batch {redux_tokens.shape[0]} must be 1 or the concept batch {batch}")
        redux = self.norm_redux(redux_tokens.expand(batch, -1, -1))
        c = concept_tokens
        h = self.norm_self(c)
        c = c + self.self_attn(h, h)
        c = c + self.cross_attn(self.norm_cross(c), redux)
        return c + self.mlp(self.norm_mlp(c))


def _accept_multihead_layout(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: a format-version-1 DEM (nn.MultiheadAttention keys) loads too."""
    own = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
    state_dict.update({prefix + k: v for k, v in dem_state_dict_from_multihead(own).items()})


def replace_learned_token(text_tokens: torch.Tensor, learned_positions: torch.Tensor,
                          updated_rows: torch.Tensor) -> torch.Tensor:
    """text_tokens [B, L, D] with row learned_positions[b] of sample b replaced by updated_rows[b] ([B, D]).

    Out of place (the prompt's tensor may be shared by other conditionings), differentiable in both inputs.
    """
    batch, length, dim = text_tokens.shape
    if learned_positions.shape != (batch,) or updated_rows.shape != (batch, dim):
        raise ValueError(f"need positions [{batch}] and rows [{batch}, {dim}], got "
                         f"{list(learned_positions.shape)} and {list(updated_rows.shape)}")
    if ((learned_positions < 0) | (learned_positions >= length)).any():
        raise ValueError(f"learned positions {learned_positions.tolist()} outside [0, {length})")
    rows = torch.arange(length, device=text_tokens.device)
    hit = (rows[None, :] == learned_positions.to(text_tokens.device)[:, None]).unsqueeze(-1)  # [B, L, 1]
    return torch.where(hit, updated_rows.to(text_tokens.dtype).unsqueeze(1), text_tokens)


def _check_selective(q, k, v, text_len, concept_mask, reference_span):
    if not (q.shape == k.shape == v.shape) or q.ndim != 4:
        raise ValueError(f"q, k, v must share a [B, H, L, D] shape, got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    start, end = reference_span
    if not 0 <= text_len <= start <= end <= q.shape[2]:
        raise ValueError(f"need 0 <= text_len {text_len} <= reference start {start} <= end {end} <= L {q.shape[2]}")
    if concept_mask.ndim != 2 or concept_mask.shape[0] not in (1, q.shape[0]) or concept_mask.shape[1] != text_len:
        raise ValueError(f"concept_mask must be [B={q.shape[0]}, text_len={text_len}], got {list(concept_mask.shape)}")


def dense_selective_mask(batch: int, L: int, text_len: int, concept_mask: torch.Tensor,
                         reference_span: tuple[int, int]) -> torch.Tensor:
    """The definition, bool [B, 1, L, L], True = may attend: non-concept text rows x reference columns are blocked."""
    start, end = reference_span
    positions = torch.arange(L, device=concept_mask.device)
    blocked_rows = torch.zeros(concept_mask.shape[0], L, dtype=torch.bool, device=concept_mask.device)
    blocked_rows[:, :text_len] = ~concept_mask.bool()
    reference_cols = (positions >= start) & (positions < end)
    allowed = ~(blocked_rows[:, :, None] & reference_cols[None, None, :])
    return allowed.expand(batch, L, L).unsqueeze(1)


def selective_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, text_len: int,
                        concept_mask: torch.Tensor, reference_span: tuple[int, int]) -> torch.Tensor:
    """SDPA under `dense_selective_mask`, without an L x L mask. [B, H, L, D] -> [B, H, L, D].

    Every row first gets plain attention (the fast kernel). Blocked rows all drop the same key set, so the
    text rows are run again against the keys without the reference span (no mask at all), and the
    non-concept rows take that result. A text row always keeps the text and noise keys: never all masked.
    """
    _check_selective(q, k, v, text_len, concept_mask, reference_span)
    out = F.scaled_dot_product_attention(q, k, v)
    start, end = reference_span
    if start == end or text_len == 0:
        return out

    def without_references(t):  # the usual layout has the references last: a view, no copy
        return t[:, :, :start] if end == t.shape[2] else torch.cat((t[:, :, :start], t[:, :, end:]), dim=2)

    text_out = F.scaled_dot_product_attention(q[:, :, :text_len], without_references(k), without_references(v))
    blocked = ~concept_mask.to(device=q.device, dtype=torch.bool)[:, None, :, None]  # [B, 1, text_len, 1]
    text_rows = torch.where(blocked, text_out, out[:, :, :text_len])
    return torch.cat((text_rows, out[:, :, text_len:]), dim=2)


class ReferenceOnlyLoRA(nn.Module):
    """base(x), plus scale * up(down(x)) on the last `reference_tokens` rows (the reference tokens) only."""

    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.base, self.scale, self.reference_tokens = base, float(scale), 0
        self.down = nn.Linear(base.in_features, rank, bias=False, **factory)
        self.up = nn.Linear(rank, base.out_features, bias=False, **factory)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # as peft's lora_A
        nn.init.zeros_(self.up.weight)  # a fresh LoRA changes nothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        n = self.reference_tokens
        if n == 0:
            return y
        if n < 0 or x.ndim < 2 or n > x.shape[-2]:
            raise ValueError(f"reference_tokens {n} does not fit a sequence of shape {list(x.shape)} (tokens at dim -2)")
        # The LoRA may be kept in float32 over a bf16 base (an optimizer needs full-precision weights).
        delta = self.up(self.down(x[..., -n:, :].to(self.down.weight.dtype)))
        tail = y[..., -n:, :] + (self.scale * delta).to(y.dtype)
        return torch.cat((y[..., :-n, :], tail), dim=-2)

    def delta_weight(self) -> torch.Tensor:
        """What the LoRA adds to base.weight on reference rows: scale * up @ down, [out, in]."""
        return self.scale * self.up.weight @ self.down.weight


def add_reference_lora_(output: torch.Tensor, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                        reference_tokens: int) -> torch.Tensor:
    """output[..., -n:, :r] += up(down(x[..., -n:, :])), in place; returns output.

    The inference form of ReferenceOnlyLoRA for a Linear that is not wrapped: x [B, L, in] is the Linear's
    input, output [B, L, out] its fresh result, down [rank, in], up [r, rank] (scale folded in) cover the
    first r <= out output features (a fused single-block linear1: q|k|v rows only). n = reference_tokens.
    """
    n = reference_tokens
    if n <= 0:
        return output
    if n > x.shape[-2] or up.shape[0] > output.shape[-1] or down.shape[1] != x.shape[-1]:
        raise ValueError(f"a reference LoRA of up {list(up.shape)} x down {list(down.shape)} over the last {n} tokens "
                         f"does not fit a Linear taking {list(x.shape)} to {list(output.shape)}")
    delta = F.linear(F.linear(x[..., -n:, :], down), up)
    output[..., -n:, :up.shape[0]] += delta.to(output.dtype)
    return output


def install_reference_lora(root: nn.Module, target_names: list[str], rank: int,
                           scale: float = 1.0) -> dict[str, ReferenceOnlyLoRA]:
    """Replace each named nn.Linear under root (dotted names) by a ReferenceOnlyLoRA around it.

    All names are checked before anything is replaced, so a bad name leaves root untouched.
    """
    if len(set(target_names)) != len(target_names):
        raise ValueError(f"duplicate LoRA targets in {target_names}")
    for name in target_names:
        try:
            module = root.get_submodule(name)
        except AttributeError:
            raise ValueError(f"LoRA target {name!r} does not exist") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"LoRA target {name!r} is a {type(module).__name__}, not nn.Linear")
    wrappers = {}
    for name in target_names:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        wrappers[name] = ReferenceOnlyLoRA(getattr(parent, child), rank, scale)
        setattr(parent, child, wrappers[name])
    return wrappers


@contextmanager
def reference_tokens(modules: Iterable[ReferenceOnlyLoRA], count: int) -> Iterator[None]:
    """Set reference_tokens = count on each module for the duration; previous values come back afterwards."""
    if count < 0:
        raise ValueError(f"reference token count must be >= 0, got {count}")
    modules = list(modules)
    previous = [m.reference_tokens for m in modules]
    try:
        for m in modules:
            m.reference_tokens = count
        yield
    finally:
        for m, old in zip(modules, previous, strict=True):
            m.reference_tokens = old


def reference_lora_state_dict(modules: dict[str, ReferenceOnlyLoRA]) -> dict[str, torch.Tensor]:
    """{name}.lora_down.weight [rank, in] and {name}.lora_up.weight [out, rank] for each wrapper."""
    state = {}
    for name, m in modules.items():
        state[f"{name}.lora_down.weight"] = m.down.weight.detach()
        state[f"{name}.lora_up.weight"] = m.up.weight.detach()
    return state


def _check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], what: str,
                      shape_error: str) -> None:
    """Keys of `given` exactly those of `expected`, with the same shapes; else ValueError listing the difference."""
    missing, unexpected = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{what} does not match: missing keys {missing}, unexpected keys {unexpected}")
    wrong = [f"{k}: {list(given[k].shape)} != {list(v.shape)}" for k, v in expected.items() if given[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{shape_error}: {wrong}")


def load_reference_lora_state_dict(modules: dict[str, ReferenceOnlyLoRA], state_dict: dict[str, torch.Tensor]) -> None:
    """Inverse of reference_lora_state_dict: copies into the wrappers; keys and shapes must match exactly."""
    targets = {}
    for name, m in modules.items():
        targets[f"{name}.lora_down.weight"] = m.down.weight
        targets[f"{name}.lora_up.weight"] = m.up.weight
    _check_state_dict(targets, state_dict, "reference LoRA state dict", "reference LoRA shapes do not match")
    with torch.no_grad():
        for key, parameter in targets.items():
            parameter.copy_(state_dict[key])


def insert_learned_token(prompt: str, concept: str, token: str = "S*") -> tuple[str, str]:
    """Split `prompt` around the first occurrence of `concept` (any case), for writing `token` before it.

    Returns (text before the concept, text from the concept on). If the prompt already has `token`
    right before the concept, it is not written twice. A prompt without the concept is an error: AlignGen
    needs to know which T5 rows are the concept's.
    """
    import re

    if not concept.strip():
        raise ValueError("AlignGen needs the concept name (e.g. 'acoustic guitar'): the words S* is placed before")
    match = re.search(re.escape(concept.strip()), prompt, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"the prompt {prompt!r} does not contain the concept name {concept.strip()!r}; write the "
                         "concept name in the prompt (AlignGen places its learned token right before it)")
    before = prompt[:match.start()].rstrip()
    if before.endswith(token):
        before = before[: -len(token)].rstrip()
    return before, prompt[match.start():]
