"""train/losses.py: routing and placeholder losses, token-grid masks, flow matching, sigma sampling.

Expected values come from independent computations: explicit Python loops over layers, references,
samples, heads and tokens (the full [reference token, image token] logit matrix is formed and then
averaged, unlike the implementation's mean query), hand-written softmax, and block means of pixels.
The losses compute in float32 (inputs are cast), so float64 loop references are compared at rel 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch

from refcustom.train.losses import (
    flow_matching_loss,
    flow_matching_target,
    mask_to_tokens,
    noisy_latents,
    placeholder_loss,
    routing_loss,
    sample_sigmas,
)

B, H, D, N = 2, 3, 8, 12
REF_TOKENS = (5, 7)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _routing_inputs(seed: int = 0, n_layers: int = 2):
    g = _gen(seed)
    layers = []
    for _ in range(n_layers):
        queries = [torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for n in REF_TOKENS]
        keys = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)
        layers.append((queries, keys))
    target = torch.rand(B, len(REF_TOKENS), N, generator=g, dtype=torch.float64)
    return layers, target


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(a[c]) * float(b[c]) for c in range(a.shape[0]))


def _routing_reference(layers, target, valid) -> float:
    total, pairs = 0.0, 0
    for b in range(B):
        for i in range(len(REF_TOKENS)):
            pairs += bool(valid[b, i])
    if pairs == 0:
        return 0.0
    for queries, keys in layers:
        for i, q in enumerate(queries):
            n_ref = q.shape[2]
            for b in range(B):
                if not bool(valid[b, i]):
                    continue
                # full [t, n] logit matrix per head, then the mean over heads and reference tokens
                response = [0.0] * N
                for h in range(H):
                    for t in range(n_ref):
                        for n in range(N):
                            response[n] += _dot(q[b, h, t], keys[b, h, n]) / math.sqrt(D)
                response = [r / (H * n_ref) for r in response]
                error = sum((response[n] - float(target[b, i, n])) ** 2 for n in range(N)) / N
                total += error
    return total / (pairs * len(layers))


def test_routing_loss_matches_loop_computation():
    layers, target = _routing_inputs(seed=1)
    valid = torch.ones(B, len(REF_TOKENS), dtype=torch.bool)
    loss = routing_loss(layers, target, valid)
    assert loss.ndim == 0
    assert float(loss) == pytest.approx(_routing_reference(layers, target, valid), rel=1e-5, abs=1e-7)


def test_routing_loss_excludes_invalid_references():
    layers, target = _routing_inputs(seed=2)
    valid = torch.tensor([[True, True], [True, False]])
    loss = routing_loss(layers, target, valid)
    expected = _routing_reference(layers, target, valid)
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # the average is over 3 valid pairs, not 4: differs from the all-valid value
    assert float(loss) != pytest.approx(_routing_reference(layers, target, torch.ones_like(valid)), rel=1e-6)

    changed = target.clone()
    changed[1, 1] = changed[1, 1] + 5.0  # the masked-out reference's target
    assert float(routing_loss(layers, changed, valid)) == pytest.approx(float(loss), rel=1e-12, abs=1e-15)
    changed_valid = target.clone()
    changed_valid[1, 0] = changed_valid[1, 0] + 5.0  # a valid reference's target does matter
    assert float(routing_loss(layers, changed_valid, valid)) > float(loss) + 1e-3


def test_routing_loss_all_invalid_is_zero():
    layers, target = _routing_inputs(seed=3)
    valid = torch.zeros(B, len(REF_TOKENS), dtype=torch.bool)
    loss = routing_loss(layers, target, valid)
    assert loss.ndim == 0
    assert float(loss) == 0.0


def test_routing_loss_gradient_reaches_queries_and_keys():
    layers, target = _routing_inputs(seed=4, n_layers=1)
    queries, keys = layers[0]
    queries = [q.clone().requires_grad_(True) for q in queries]
    keys = keys.clone().requires_grad_(True)
    loss = routing_loss([(queries, keys)], target, torch.ones(B, len(REF_TOKENS), dtype=torch.bool))
    loss.backward()
    for q in queries:
        assert q.grad is not None and float(q.grad.abs().sum()) > 0
    assert keys.grad is not None and float(keys.grad.abs().sum()) > 0


def _placeholder_inputs(seed: int = 0, n_layers: int = 2):
    g = _gen(seed)
    layers = []
    n_refs = len(REF_TOKENS)
    for _ in range(n_layers):
        queries = [torch.randn(B, H, n, D, generator=g, dtype=torch.float64) * 2 for n in REF_TOKENS]
        keys = torch.randn(B, H, n_refs, D, generator=g, dtype=torch.float64) * 2
        layers.append((queries, keys))
    return layers


def _placeholder_reference(layers, valid) -> float:
    n_valid = sum(bool(v) for v in valid)
    if n_valid == 0:
        return 0.0
    total, pairs = 0.0, 0
    for queries, keys in layers:
        n_refs = keys.shape[2]
        for i, q in enumerate(queries):
            pairs += 1
            for b in range(B):
                if not bool(valid[b]):
                    continue
                per_head = []
                for h in range(H):
                    per_token = []
                    for t in range(q.shape[2]):
                        logits = [_dot(q[b, h, t], keys[b, h, r]) / math.sqrt(D) for r in range(n_refs)]
                        top = max(logits)
                        exps = [math.exp(x - top) for x in logits]
                        probs = [e / sum(exps) for e in exps]
                        per_token.append(sum((probs[r] - (1.0 if r == i else 0.0)) ** 2 for r in range(n_refs)))
                    per_head.append(sum(per_token) / len(per_token))
                total += sum(per_head) / H
    return total / (n_valid * pairs)


def test_placeholder_loss_matches_loop_computation():
    layers = _placeholder_inputs(seed=5)
    valid = torch.ones(B, dtype=torch.bool)
    loss = placeholder_loss(layers, valid)
    assert loss.ndim == 0
    assert float(loss) == pytest.approx(_placeholder_reference(layers, valid), rel=1e-5, abs=1e-7)


def test_placeholder_loss_excludes_invalid_samples():
    layers = _placeholder_inputs(seed=6)
    valid = torch.tensor([False, True])
    loss = placeholder_loss(layers, valid)
    assert float(loss) == pytest.approx(_placeholder_reference(layers, valid), rel=1e-5, abs=1e-7)
    assert float(loss) != pytest.approx(_placeholder_reference(layers, torch.ones(B, dtype=torch.bool)), rel=1e-6)

    # scrambling the invalid sample's queries and keys changes nothing
    scrambled = [([q.clone() for q in qs], k.clone()) for qs, k in layers]
    for qs, k in scrambled:
        for q in qs:
            q[0] = -3 * q[0] + 1
        k[0] = k[0].flip(-1) * 4
    assert float(placeholder_loss(scrambled, valid)) == pytest.approx(float(loss), rel=1e-12, abs=1e-15)


def test_placeholder_loss_all_invalid_is_zero():
    loss = placeholder_loss(_placeholder_inputs(seed=7), torch.zeros(B, dtype=torch.bool))
    assert loss.ndim == 0
    assert float(loss) == 0.0


def _aligned_placeholder_layers(swap: bool):
    n_refs = len(REF_TOKENS)
    g = _gen(8)
    # orthonormal placeholder keys per (b, h): columns of a QR factor
    keys = torch.empty(B, H, n_refs, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            basis, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
            keys[b, h] = basis[:, :n_refs].T
    queries = []
    for i, n in enumerate(REF_TOKENS):
        own = (n_refs - 1 - i) if swap else i
        queries.append((50 * keys[:, :, own : own + 1]).expand(B, H, n, D).clone())
    return [(queries, keys), (queries, keys)]


def test_placeholder_loss_perfect_and_swapped_routing():
    valid = torch.ones(B, dtype=torch.bool)
    perfect = float(placeholder_loss(_aligned_placeholder_layers(swap=False), valid))
    swapped = float(placeholder_loss(_aligned_placeholder_layers(swap=True), valid))
    assert 0.0 <= perfect < 1e-3
    assert swapped == pytest.approx(2.0, abs=1e-3)


def test_mask_to_tokens_block_means():
    g = _gen(9)
    masks = (torch.rand(B, 2, 32, 32, generator=g) > 0.5).float()
    tokens = mask_to_tokens(masks, patch=16)
    assert tokens.shape == (B, 2, 4)
    for b in range(B):
        for i in range(2):
            for row in range(2):
                for col in range(2):
                    block = [float(masks[b, i, y, x]) for y in range(16 * row, 16 * row + 16)
                             for x in range(16 * col, 16 * col + 16)]
                    assert float(tokens[b, i, row * 2 + col]) == pytest.approx(sum(block) / 256, abs=1e-6)


def test_mask_to_tokens_top_left_block():
    masks = torch.zeros(1, 1, 32, 32)
    masks[0, 0, :16, :16] = 1.0
    assert mask_to_tokens(masks, patch=16).tolist() == [[[1.0, 0.0, 0.0, 0.0]]]
    masks = torch.zeros(1, 1, 32, 32)
    masks[0, 0, :16, 16:] = 1.0  # top-right block: token 1 (row-major grid)
    assert mask_to_tokens(masks, patch=16).tolist() == [[[0.0, 1.0, 0.0, 0.0]]]


def test_noisy_latents_per_sample_sigma():
    g = _gen(10)
    x0 = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    xt = noisy_latents(x0, noise, sigma)
    assert xt.shape == x0.shape
    for b in range(3):
        s = float(sigma[b])
        for idx in range(x0[b].numel()):
            expected = (1 - s) * float(x0[b].flatten()[idx]) + s * float(noise[b].flatten()[idx])
            assert float(xt[b].flatten()[idx]) == pytest.approx(expected, abs=1e-12)
    assert torch.equal(xt[0], x0[0])
    assert torch.equal(xt[2], noise[2])


def test_flow_matching_target_and_loss():
    g = _gen(11)
    x0 = torch.randn(2, 4, 3, 3, generator=g)
    noise = torch.randn(2, 4, 3, 3, generator=g)
    pred = torch.randn(2, 4, 3, 3, generator=g)
    target = flow_matching_target(x0, noise)
    flat_x0, flat_n, flat_t = x0.flatten().tolist(), noise.flatten().tolist(), target.flatten().tolist()
    for a, n, t in zip(flat_x0, flat_n, flat_t, strict=True):
        assert t == pytest.approx(n - a, abs=1e-6)
    flat_p = pred.flatten().tolist()
    expected = sum((p - (n - a)) ** 2 for p, n, a in zip(flat_p, flat_n, flat_x0, strict=True)) / len(flat_p)
    assert float(flow_matching_loss(pred, x0, noise)) == pytest.approx(expected, rel=1e-5)
    assert float(flow_matching_loss(noise - x0, x0, noise)) == pytest.approx(0.0, abs=1e-12)
    # a bfloat16 prediction is compared in float32
    assert flow_matching_loss(pred.bfloat16(), x0, noise).dtype == torch.float32


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_sample_sigmas_deterministic_and_in_open_interval(sampling):
    a = sample_sigmas(1000, _gen(12), sampling, 0.0, 1.0)
    b = sample_sigmas(1000, _gen(12), sampling, 0.0, 1.0)
    c = sample_sigmas(1000, _gen(13), sampling, 0.0, 1.0)
    assert a.shape == (1000,)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert bool((a > 0).all()) and bool((a < 1).all())


def test_sample_sigmas_distributions_differ():
    uniform = sample_sigmas(20000, _gen(14), "uniform", 0.0, 1.0).double()
    logit = sample_sigmas(20000, _gen(14), "logit_normal", 0.0, 1.0).double()
    assert float(uniform.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(uniform.std()) == pytest.approx(math.sqrt(1 / 12), abs=0.01)
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.01)
    # logit-normal(0, 1) has std about 0.21, well below the uniform's 0.289
    assert float(logit.std()) < math.sqrt(1 / 12) - 0.05
    # a shifted mean moves the mass: sigmoid(N(1, 1)) has mean about 0.70
    shifted = sample_sigmas(20000, _gen(15), "logit_normal", 1.0, 1.0).double()
    assert float(shifted.mean()) > 0.65
