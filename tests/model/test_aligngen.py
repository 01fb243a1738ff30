"""AlignGen: DEM vs hand-written attention math, token replacement, selective attention vs its dense
definition, reference-only LoRA vs the merged weight on the reference rows (tier 1)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from refcustom.model.aligngen import (
    DeviationExtractionModule,
    ReferenceOnlyLoRA,
    add_reference_lora_,
    dense_selective_mask,
    install_reference_lora,
    load_reference_lora_state_dict,
    reference_lora_state_dict,
    reference_tokens,
    replace_learned_token,
    selective_attention,
)


def randomise(module, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


# --- DEM --------------------------------------------------------------------------------------------


def attention_by_hand(x_q, x_kv, attn, heads):
    """Multi-head attention written out: projections, head split, softmax(q k^T / sqrt(d)) v, output projection."""
    q, k, v = (x @ layer.weight.T + layer.bias for x, layer in ((x_q, attn.to_q), (x_kv, attn.to_k), (x_kv, attn.to_v)))
    batch, d = q.shape[0], q.shape[-1] // heads

    def split(t):  # [B, N, H d] -> [B, H, N, d]
        return t.reshape(batch, t.shape[1], heads, d).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(batch, x_q.shape[1], heads * d)
    return out @ attn.to_out.weight.T + attn.to_out.bias


def dem_by_hand(dem, c, redux):
    def ln(x, norm):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    heads = dem.heads
    redux = ln(redux.expand(c.shape[0], -1, -1), dem.norm_redux)
    h = ln(c, dem.norm_self)
    c = c + attention_by_hand(h, h, dem.self_attn, heads)
    c = c + attention_by_hand(ln(c, dem.norm_cross), redux, dem.cross_attn, heads)
    first, last = dem.mlp[0], dem.mlp[2]
    h = F.gelu(ln(c, dem.norm_mlp) @ first.weight.T + first.bias, approximate="tanh")
    return c + h @ last.weight.T + last.bias


@pytest.mark.parametrize("text_dim,redux_dim,heads,redux_batch", [(16, 24, 4, 3), (16, 16, 2, 3), (12, 20, 3, 1)])
def test_dem_equals_hand_written_math(text_dim, redux_dim, heads, redux_batch):
    dem = DeviationExtractionModule(text_dim, redux_dim, heads, mlp_ratio=2.0).double()
    randomise(dem, seed=text_dim + redux_dim)  # every parameter, so the zero init hides nothing
    g = torch.Generator().manual_seed(1)
    c = torch.randn(3, 4, text_dim, generator=g, dtype=torch.float64)
    redux = torch.randn(redux_batch, 9, redux_dim, generator=g, dtype=torch.float64)
    ours = dem(c, redux)
    assert ours.shape == c.shape
    torch.testing.assert_close(ours, dem_by_hand(dem, c, redux), rtol=1e-5, atol=1e-5)


def test_fresh_dem_is_the_identity():
    dem = DeviationExtractionModule(16, 24, 4)
    g = torch.Generator().manual_seed(0)
    c, redux = torch.randn(2, 3, 16, generator=g), torch.randn(2, 7, 24, generator=g)
    torch.testing.assert_close(dem(c, redux), c, rtol=0, atol=0)


def test_gradients_reach_every_dem_parameter():
    dem = DeviationExtractionModule(16, 24, 4)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # only the zero-initialised outputs: with them at zero nothing upstream learns
        for layer in dem.output_layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.3)
    c, redux = torch.randn(2, 3, 16, generator=g), torch.randn(2, 7, 24, generator=g)
    dem(c, redux).square().sum().backward()
    for name, p in dem.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        grad = p.grad
        if name.endswith("to_k.bias"):  # the key bias adds a per-query constant to the logits: softmax ignores it
            assert grad.abs().max() < 1e-5, name
            continue
        assert grad.abs().sum() > 0, name


def test_dem_shape_errors():
    dem = DeviationExtractionModule(16, 24, 4)
    with pytest.raises(ValueError, match="concept_tokens must be"):
        dem(torch.zeros(2, 3, 12), torch.zeros(2, 5, 24))
    with pytest.raises(ValueError, match="redux_tokens must be"):
        dem(torch.zeros(2, 3, 16), torch.zeros(2, 5, 16))
    with pytest.raises(ValueError, match="redux batch 3"):
        dem(torch.zeros(2, 3, 16), torch.zeros(3, 5, 24))
    with pytest.raises(ValueError, match="divisible"):
        DeviationExtractionModule(16, 24, 3)


def test_dem_rebuilds_from_its_state_dict():
    dem = DeviationExtractionModule(16, 24, 4, mlp_ratio=2.0)
    randomise(dem, seed=5)
    state = {k: v.clone() for k, v in dem.state_dict().items()}
    rebuilt = DeviationExtractionModule.from_state_dict(state, heads=4, mlp_ratio=2.0)
    assert rebuilt.config == dem.config == {"text_dim": 16, "redux_dim": 24, "heads": 4, "mlp_ratio": 2.0}
    g = torch.Generator().manual_seed(0)
    c, redux = torch.randn(2, 3, 16, generator=g), torch.randn(1, 7, 24, generator=g)
    torch.testing.assert_close(rebuilt(c, redux), dem(c, redux))
    with pytest.raises(ValueError, match="cross_attn.to_out.bias"):
        DeviationExtractionModule.from_state_dict({k: v for k, v in state.items() if k != "cross_attn.to_out.bias"}, 4, 2.0)
    with pytest.raises(ValueError, match="extra.weight"):
        DeviationExtractionModule.from_state_dict({**state, "extra.weight": torch.zeros(1)}, 4, 2.0)
    with pytest.raises(ValueError, match="mlp.0.weight"):
        DeviationExtractionModule.from_state_dict(state, heads=4, mlp_ratio=4.0)
    with pytest.raises(ValueError, match="norm_redux.weight"):
        DeviationExtractionModule.from_state_dict({"norm_self.weight": torch.zeros(16)}, 4)


def multihead_dem_by_torch(state, c, redux, heads):
    """The format-version-1 DEM, computed with torch's own nn.MultiheadAttention modules loaded from `state`."""
    text_dim, redux_dim = state["norm_self.weight"].shape[0], state["norm_redux.weight"].shape[0]
    modules = nn.ModuleDict({
        "norm_self": nn.LayerNorm(text_dim), "norm_cross": nn.LayerNorm(text_dim), "norm_redux": nn.LayerNorm(redux_dim),
        "norm_mlp": nn.LayerNorm(text_dim), "self_attn": nn.MultiheadAttention(text_dim, heads, batch_first=True),
        "cross_attn": nn.MultiheadAttention(text_dim, heads, kdim=redux_dim, vdim=redux_dim, batch_first=True),
        "mlp": nn.Sequential(nn.Linear(text_dim, state["mlp.0.weight"].shape[0]), nn.GELU(approximate="tanh"),
                             nn.Linear(state["mlp.0.weight"].shape[0], text_dim)),
    }).double()
    modules.load_state_dict(state)
    m = modules
    redux = m["norm_redux"](redux.expand(c.shape[0], -1, -1))
    h = m["norm_self"](c)
    c = c + m["self_attn"](h, h, h, need_weights=False)[0]
    h = m["norm_cross"](c)
    c = c + m["cross_attn"](h, redux, redux, need_weights=False)[0]
    return c + m["mlp"](m["norm_mlp"](c))


def multihead_state(text_dim, redux_dim, heads, seed):
    """A random DEM state dict in format version 1 (nn.MultiheadAttention's keys), made by torch's own modules."""
    torch.manual_seed(seed)
    self_attn = nn.MultiheadAttention(text_dim, heads, batch_first=True)
    cross_attn = nn.MultiheadAttention(text_dim, heads, kdim=redux_dim, vdim=redux_dim, batch_first=True)
    state = {f"self_attn.{k}": v for k, v in self_attn.state_dict().items()}
    state |= {f"cross_attn.{k}": v for k, v in cross_attn.state_dict().items()}
    for name, width in (("norm_self", text_dim), ("norm_cross", text_dim), ("norm_redux", redux_dim),
                        ("norm_mlp", text_dim)):
        state[f"{name}.weight"], state[f"{name}.bias"] = 1 + 0.1 * torch.randn(width), 0.1 * torch.randn(width)
    state |= {"mlp.0.weight": torch.randn(2 * text_dim, text_dim) * 0.3, "mlp.0.bias": torch.randn(2 * text_dim) * 0.1,
              "mlp.2.weight": torch.randn(text_dim, 2 * text_dim) * 0.3, "mlp.2.bias": torch.randn(text_dim) * 0.1}
    for key in state:  # torch zero-initialises the MHA biases: draw them so the conversion of each one shows
        if key.endswith(("in_proj_bias", "out_proj.bias")):
            state[key] = torch.randn(state[key].shape) * 0.1
    return {k: v.double() for k, v in state.items()}


def test_a_format_version_1_dem_equals_torch_multihead_attention():
    """Files written before the DEM had leaf Linears hold nn.MultiheadAttention's keys: they load, through
    from_state_dict and through load_state_dict (the trainer's resume), and compute what torch's MHA does."""
    state = multihead_state(16, 24, 4, seed=3)
    assert "self_attn.in_proj_weight" in state and "cross_attn.k_proj_weight" in state
    g = torch.Generator().manual_seed(4)
    c = torch.randn(2, 3, 16, generator=g, dtype=torch.float64)
    redux = torch.randn(1, 5, 24, generator=g, dtype=torch.float64)
    expected = multihead_dem_by_torch(state, c, redux, heads=4)
    rebuilt = DeviationExtractionModule.from_state_dict(state, heads=4, mlp_ratio=2.0, dtype=torch.float64)
    torch.testing.assert_close(rebuilt(c, redux), expected, rtol=1e-9, atol=1e-9)
    loaded = DeviationExtractionModule(16, 24, 4, mlp_ratio=2.0).double()
    loaded.load_state_dict(state)
    torch.testing.assert_close(loaded(c, redux), expected, rtol=1e-9, atol=1e-9)


def test_dem_modules_are_leaves_and_take_the_hosts_operations():
    """A host's loader moves weights module by module: every parameter sits in a leaf module, and a host's own
    Linear/LayerNorm classes (ComfyUI's manual-cast ops) are what the DEM is built from."""
    class Ops:
        class Linear(nn.Linear):
            pass

        class LayerNorm(nn.LayerNorm):
            pass

    dem = DeviationExtractionModule(16, 24, 4, operations=Ops)
    for name, module in dem.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if own:
            assert not list(module.children()), f"{name} holds parameters and children"
            assert isinstance(module, (Ops.Linear, Ops.LayerNorm)), (name, type(module))
    rebuilt = DeviationExtractionModule.from_state_dict(dem.state_dict(), heads=4, operations=Ops, dtype=torch.float16)
    assert {p.dtype for p in rebuilt.parameters()} == {torch.float16}
    assert isinstance(rebuilt.cross_attn.to_k, Ops.Linear) and rebuilt.cross_attn.to_k.in_features == 24


# --- learned token ----------------------------------------------------------------------------------


def test_replace_learned_token_changes_only_the_given_rows():
    g = torch.Generator().manual_seed(0)
    text = torch.randn(3, 6, 8, generator=g)
    before = text.clone()
    rows = torch.randn(3, 8, generator=g, requires_grad=True)
    positions = torch.tensor([0, 4, 2])
    out = replace_learned_token(text, positions, rows)
    torch.testing.assert_close(text, before, rtol=0, atol=0)  # input untouched
    for b, pos in enumerate(positions.tolist()):
        torch.testing.assert_close(out[b, pos], rows[b].detach(), rtol=0, atol=0)
        others = [i for i in range(6) if i != pos]
        torch.testing.assert_close(out[b, others], text[b, others], rtol=0, atol=0)
    weights = torch.randn(3, 6, 8, generator=g)
    (out * weights).sum().backward()
    torch.testing.assert_close(rows.grad, weights[torch.arange(3), positions])
    with pytest.raises(ValueError, match="outside"):
        replace_learned_token(text, torch.tensor([0, 6, 1]), rows)


# --- selective attention ----------------------------------------------------------------------------


def qkv(batch, heads, length, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=g) for _ in range(3)]


CONCEPTS = torch.tensor([[False, True, True, False, False],
                         [False, False, False, False, True],
                         [True, True, True, True, True],
                         [False, False, False, False, False]])


def loop_mask(batch, length, text_len, concept_mask, span):
    allowed = torch.ones(batch, 1, length, length, dtype=torch.bool)
    for b in range(batch):
        for row in range(text_len):
            for col in range(*span):
                if not concept_mask[b, row]:
                    allowed[b, 0, row, col] = False
    return allowed


@pytest.mark.parametrize("span", [(12, 16), (8, 12), (5, 9), (10, 11)])
def test_selective_attention_equals_dense_definition(span):
    q, k, v = qkv(4, 2, 16, 8, seed=span[0])
    mask = dense_selective_mask(4, 16, 5, CONCEPTS, span)
    torch.testing.assert_close(mask, loop_mask(4, 16, 5, CONCEPTS, span), rtol=0, atol=0)
    ours = selective_attention(q, k, v, text_len=5, concept_mask=CONCEPTS, reference_span=span)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=1e-5, atol=1e-5)
    plain = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(ours[:, :, 5:], plain[:, :, 5:], rtol=1e-5, atol=1e-5)  # image rows
    concept = CONCEPTS[:, None, :, None].expand(-1, 2, -1, 8)
    torch.testing.assert_close(ours[:, :, :5][concept], plain[:, :, :5][concept], rtol=1e-5, atol=1e-5)


def test_only_concept_rows_see_reference_values():
    q, k, v = qkv(4, 2, 16, 8, seed=3)
    changed = v.clone()
    changed[:, :, 12:] += 5.0
    a = selective_attention(q, k, v, text_len=5, concept_mask=CONCEPTS, reference_span=(12, 16))
    b = selective_attention(q, k, changed, text_len=5, concept_mask=CONCEPTS, reference_span=(12, 16))
    torch.testing.assert_close(a[0, :, 0], b[0, :, 0], rtol=0, atol=0)  # "a" in "a S* guitar"
    assert (a[0, :, 1] - b[0, :, 1]).abs().max() > 1e-3  # S*


def test_selective_attention_without_references_is_plain_and_checks_shapes():
    q, k, v = qkv(4, 2, 16, 8, seed=4)
    ours = selective_attention(q, k, v, text_len=5, concept_mask=CONCEPTS, reference_span=(16, 16))
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0)
    with pytest.raises(ValueError, match="reference start"):
        selective_attention(q, k, v, text_len=5, concept_mask=CONCEPTS, reference_span=(3, 16))
    with pytest.raises(ValueError, match="concept_mask must be"):
        selective_attention(q, k, v, text_len=5, concept_mask=CONCEPTS[:, :4], reference_span=(12, 16))


# --- reference-only LoRA ----------------------------------------------------------------------------


def lora_linear(seed, scale=0.5):
    torch.manual_seed(seed)
    lora = ReferenceOnlyLoRA(nn.Linear(6, 5), rank=3, scale=scale)
    with torch.no_grad():
        lora.up.weight.normal_()  # a fresh up is zero: make the LoRA do something
    return lora


@pytest.mark.parametrize("shape,count", [((2, 7, 6), 3), ((2, 3, 7, 6), 7), ((7, 6), 1)])
def test_lora_applies_the_merged_weight_to_the_reference_rows_only(shape, count):
    lora = lora_linear(0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    lora.reference_tokens = count
    merged = lora.base.weight + lora.scale * lora.up.weight @ lora.down.weight
    expected = torch.cat([F.linear(x[..., :-count, :], lora.base.weight, lora.base.bias),
                          F.linear(x[..., -count:, :], merged, lora.base.bias)], dim=-2)
    torch.testing.assert_close(lora(x), expected)
    torch.testing.assert_close(lora.delta_weight(), merged - lora.base.weight)
    lora.reference_tokens = 0
    torch.testing.assert_close(lora(x), lora.base(x), rtol=0, atol=0)
    lora.reference_tokens = shape[-2] + 1
    with pytest.raises(ValueError, match="does not fit"):
        lora(x)


@pytest.mark.parametrize("rows", [5, 3])  # every output feature, or the first 3 (a fused linear1's q|k|v rows)
def test_add_reference_lora_is_the_merged_weight_on_the_reference_rows(rows):
    g = torch.Generator().manual_seed(6)
    base = nn.Linear(6, 5)
    down, up = torch.randn(2, 6, generator=g), torch.randn(rows, 2, generator=g)
    x = torch.randn(2, 7, 6, generator=g)
    merged = base.weight.detach().clone()
    merged[:rows] += up @ down
    expected = torch.cat([base(x[:, :4]), F.linear(x[:, 4:], merged, base.bias)], dim=1)
    out = base(x)
    assert add_reference_lora_(out, x, down, up, 3) is out  # in place on the Linear's fresh output
    torch.testing.assert_close(out, expected)
    untouched = base(x)
    torch.testing.assert_close(add_reference_lora_(untouched.clone(), x, down, up, 0), untouched, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not fit"):
        add_reference_lora_(base(x), x, down, torch.randn(6, 2), 3)


def test_fresh_lora_changes_nothing_and_learns():
    lora = ReferenceOnlyLoRA(nn.Linear(6, 5), rank=3)
    assert lora.down.weight.abs().sum() > 0 and lora.up.weight.abs().sum() == 0
    x = torch.randn(2, 4, 6)
    lora.reference_tokens = 2
    out = lora(x)
    torch.testing.assert_close(out, lora.base(x), rtol=0, atol=0)
    out.sum().backward()
    assert lora.up.weight.grad.abs().sum() > 0


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.to_qkv = nn.Linear(8, 24)
        self.norm = nn.LayerNorm(8)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer_blocks = nn.ModuleList([Block(), Block()])
        self.proj_out = nn.Linear(8, 8, dtype=torch.float64)


def test_install_wraps_named_linears_and_rejects_bad_names():
    toy = Toy()
    original = toy.transformer_blocks[1].attn.to_qkv
    names = ["transformer_blocks.1.attn.to_qkv", "proj_out"]
    wrappers = install_reference_lora(toy, names, rank=4, scale=2.0)
    assert list(wrappers) == names
    assert toy.transformer_blocks[1].attn.to_qkv is wrappers[names[0]] and wrappers[names[0]].base is original
    assert wrappers["proj_out"].down.weight.dtype == torch.float64 and wrappers["proj_out"].scale == 2.0
    assert isinstance(toy.transformer_blocks[0].attn.to_qkv, nn.Linear)
    for bad, message in [("transformer_blocks.0.attn.to_kv", "does not exist"),
                         ("transformer_blocks.0.norm", "LayerNorm, not nn.Linear")]:
        with pytest.raises(ValueError, match=message):
            install_reference_lora(toy, ["transformer_blocks.0.attn.to_qkv", bad], rank=4)
        assert isinstance(toy.transformer_blocks[0].attn.to_qkv, nn.Linear)  # nothing replaced


def test_reference_tokens_context_restores_values():
    wrappers = list(install_reference_lora(Toy(), ["transformer_blocks.0.attn.to_qkv", "proj_out"], rank=2).values())
    wrappers[1].reference_tokens = 3
    with reference_tokens(wrappers, 5):
        assert [w.reference_tokens for w in wrappers] == [5, 5]
    assert [w.reference_tokens for w in wrappers] == [0, 3]
    with pytest.raises(RuntimeError, match="boom"), reference_tokens(iter(wrappers), 7):
        raise RuntimeError("boom")
    assert [w.reference_tokens for w in wrappers] == [0, 3]


def test_lora_state_dict_round_trip():
    names = ["transformer_blocks.0.attn.to_qkv", "transformer_blocks.1.attn.to_qkv"]
    trained, fresh = install_reference_lora(Toy(), names, rank=4), install_reference_lora(Toy(), names, rank=4)
    randomise(nn.ModuleList([m for w in trained.values() for m in (w.down, w.up)]), seed=9)
    state = reference_lora_state_dict(trained)
    assert sorted(state) == sorted(f"{n}.lora_{part}.weight" for n in names for part in ("down", "up"))
    load_reference_lora_state_dict(fresh, state)
    for name in names:
        torch.testing.assert_close(fresh[name].delta_weight(), trained[name].delta_weight(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing keys.*to_qkv.lora_up"):
        load_reference_lora_state_dict(fresh, {k: v for k, v in state.items() if "0.attn.to_qkv.lora_up" not in k})
    with pytest.raises(ValueError, match="shapes do not match"):
        load_reference_lora_state_dict(fresh, {**state, f"{names[0]}.lora_down.weight": torch.zeros(2, 8)})
