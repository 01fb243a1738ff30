"""The AlignGen trainer on the tiny FLUX, the tiny Redux and the synthetic shapes task (tier 1: no ComfyUI).

- The training model's forward (fused qkv + reference-only LoRA + selective-attention processor)
  equals a fresh, unfused diffusers FLUX whose attention is written out here (SDPA under the dense
  mask of `dense_selective_mask`) and whose reference-only LoRA is added by forward hooks on the
  trailing reference rows of the unfused projections; a fully open mask is plain FLUX attention.
- Training runs selective attention in every block, its concept rows being S* and the concept name.
- Training lowers the loss and moves every trainable part that reaches the loss (S* row, DEM out
  projections, every LoRA up matrix but the last single block's proj_out, which cannot).
- A run interrupted and resumed logs and exports the same as an uninterrupted one, bit for bit,
  with reference dropout and concept substitution drawing random choices.
- The export has the aligngen.* layout, its DEM loads back, its metadata names the mode and options.
- Dataset errors name their metadata line.

The fused qkv Linears that diffusers creates when fusing are frozen too ("only trainable parts move"):
an earlier AlignGenFlux froze FLUX before fusing and trained them by accident.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from refcustom.model.aligngen import DeviationExtractionModule, dense_selective_mask
from refcustom.train.aligngen_method import AlignGenMethod
from refcustom.train.config import config_from_dict
from refcustom.train.synthetic import write_shapes_dataset
from refcustom.train.tiny_model import write_tiny_flux
from refcustom.train.trainer import Trainer

RANK = 4
DEM_HEADS = 2
EXPORT = "aligngen_lora.safetensors"


@pytest.fixture(scope="module")
def tiny_flux_dir(tmp_path_factory):
    return write_tiny_flux(tmp_path_factory.mktemp("tiny") / "tiny-flux")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", count=8, seed=0, max_references=1)


def make_config(out, model_dir, data, **overrides):
    values = {
        "mode": "aligngen", "output_dir": str(out), "seed": 3,
        "model": {"pretrained": "tiny", "tiny_dir": str(model_dir), "max_text_tokens": 32, "redux": "tiny"},
        # One latent/Redux/text cache for the whole module (entries are keyed by file, size and model).
        "data": {"folder": str(data), "resolution": 64, "reference_resolution": 32, "batch_size": 2,
                 "cache_dir": str(Path(model_dir).parent / "cache")},
        "lora": {"rank": RANK},
        "aligngen": {"dem_heads": DEM_HEADS},
        "optim": {"learning_rate": 1e-3},
        "stages": [{"name": "train", "steps": 3}],
        "run": {"log_every": 1, "checkpoint_every": 100, "sample_count": 0, "export_dtype": "float32"},
    }
    for key, value in overrides.items():
        values[key] = value if not isinstance(value, dict) else {**values.get(key, {}), **value}
    return config_from_dict(values)


def dead_lora_parts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference-only LoRA weights that cannot reach the loss: in the LAST single block the reference rows
    only produce reference outputs, which FLUX's head computes and the model then drops; so its proj_out LoRA
    and the query third of its qkv LoRA get no gradient (their keys and values still feed the noise tokens)."""
    last = max(int(k.split(".")[2]) for k in state if k.startswith("lora.single_transformer_blocks."))
    prefix = f"lora.single_transformer_blocks.{last}"
    return {"proj_out": state[f"{prefix}.proj_out.lora_up.weight"],
            "query": state[f"{prefix}.attn.to_qkv.lora_up.weight"].chunk(3)[0]}


def live_lora_ups(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every LoRA up matrix that the loss reaches (all but the last single block's proj_out)."""
    last = max(int(k.split(".")[2]) for k in state if k.startswith("lora.single_transformer_blocks."))
    dead = f"lora.single_transformer_blocks.{last}.proj_out.lora_up.weight"
    return {k: v for k, v in state.items() if k.endswith("lora_up.weight") and k != dead}


def log_lines(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_flux_dir, shapes):
    """A finished 3-step run (the LoRA up matrices start at zero: a few steps make them matter) and its export."""
    out = tmp_path_factory.mktemp("trained")
    trainer = Trainer(make_config(out, tiny_flux_dir, shapes))
    path = trainer.train()
    return trainer, path


@pytest.fixture(scope="module")
def handset(tmp_path_factory, tiny_flux_dir, shapes):
    """An untrained trainer whose reference-only LoRA up matrices are set by hand to random non-zero values."""
    trainer = Trainer(make_config(tmp_path_factory.mktemp("handset"), tiny_flux_dir, shapes))
    g = torch.Generator().manual_seed(1)
    state = trainer.method.model.trainable_state_dict()
    state = {k: 0.05 * torch.randn(v.shape, generator=g) if k.endswith("lora_up.weight") else v for k, v in state.items()}
    trainer.method.model.load_trainable_state_dict(state)
    return trainer




def random_inputs(text_len=7):
    g = torch.Generator().manual_seed(0)
    noisy, reference = torch.randn(2, 16, 64, generator=g), torch.randn(2, 4, 64, generator=g)
    grids = [(4, 4), (2, 2)]
    context, pooled = torch.randn(2, text_len, 32, generator=g), torch.randn(2, 32, generator=g)
    sigma, guidance = torch.tensor([0.3, 0.8]), torch.tensor([3.5, 3.5])
    concept_mask = torch.zeros(2, text_len, dtype=torch.bool)
    concept_mask[0, 1:3] = True
    concept_mask[1, 4:7] = True
    return noisy, reference, grids, context, pooled, sigma, guidance, concept_mask


class DenseMaskFluxProcessor:
    """Plain FLUX joint attention on the UNFUSED projections, SDPA under a given dense bool mask [B, 1, L, L]."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        def heads(x):
            return x.unflatten(-1, (attn.heads, -1))

        query = attn.norm_q(heads(attn.to_q(hidden_states)))
        key = attn.norm_k(heads(attn.to_k(hidden_states)))
        value = heads(attn.to_v(hidden_states))
        text_len = 0
        if encoder_hidden_states is not None:
            text_len = encoder_hidden_states.shape[1]
            query = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states))), query], dim=1)
            key = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states))), key], dim=1)
            value = torch.cat([heads(attn.add_v_proj(encoder_hidden_states)), value], dim=1)
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        assert self.mask.shape[-1] == query.shape[1], "the dense mask must cover the joint sequence"
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             attn_mask=self.mask)
        out = out.transpose(1, 2).flatten(2, 3)
        if encoder_hidden_states is None:
            return out
        return attn.to_out[1](attn.to_out[0](out[:, text_len:])), attn.to_add_out(out[:, :text_len])


def independent_aligngen_forward(trainer, noisy, reference, grids, context, pooled, sigma, guidance, concept_mask):
    """A fresh unfused diffusers FLUX, dense-mask attention written above, reference-only LoRA added by hooks."""
    from diffusers import FluxTransformer2DModel

    from refcustom.model.dreamo_conditioning import diagonal_position_ids

    plain = FluxTransformer2DModel.from_pretrained(trainer.model_path, subfolder="transformer").eval()
    model = trainer.method.model
    state = model.trainable_state_dict()
    n_ref, text_len = reference.shape[1], context.shape[1]
    total = text_len + noisy.shape[1] + n_ref
    mask = dense_selective_mask(2, total, text_len, concept_mask, (text_len + noisy.shape[1], total))
    plain.set_attn_processor(DenseMaskFluxProcessor(mask))

    def add_to_reference_rows(delta):
        def hook(module, args, out):
            x = args[0]
            tail = out[:, -n_ref:] + x[:, -n_ref:] @ delta.T
            return torch.cat([out[:, :-n_ref], tail], dim=1)
        return hook

    handles = []
    hooked = set()
    for key, down in state.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.removeprefix("lora.").removesuffix(".lora_down.weight")
        delta = model.lora_scale * state[f"lora.{name}.lora_up.weight"] @ down
        if name.endswith(".to_qkv"):
            parent = name.removesuffix(".to_qkv")
            for leaf, part in zip(("to_q", "to_k", "to_v"), delta.chunk(3, dim=0), strict=True):
                handles.append(plain.get_submodule(f"{parent}.{leaf}").register_forward_hook(add_to_reference_rows(part)))
                hooked.add(f"{parent}.{leaf}")
        else:
            handles.append(plain.get_submodule(name).register_forward_hook(add_to_reference_rows(delta)))
            hooked.add(name)
    depth, single = len(plain.transformer_blocks), len(plain.single_transformer_blocks)
    assert len(hooked) == 4 * depth + 4 * single  # q, k, v, out per double block; q, k, v, proj_out per single
    try:
        with torch.no_grad():
            out = plain(hidden_states=torch.cat([noisy, reference], dim=1), encoder_hidden_states=context,
                        pooled_projections=pooled, timestep=sigma, img_ids=diagonal_position_ids(grids[0], grids[1:]),
                        txt_ids=torch.zeros(text_len, 3), guidance=guidance).sample
    finally:
        for handle in handles:
            handle.remove()
    return out[:, :noisy.shape[1]]


def test_aligngen_forward_equals_independent_computation(handset):
    """The forward itself, with a non-zero LoRA set by hand (no training, so the frozen weights are pretrained)."""
    ups = live_lora_ups(handset.method.model.trainable_state_dict())
    assert len(ups) == 7 and all(float(u.abs().max()) > 1e-3 for u in ups.values())
    inputs = random_inputs()
    model = handset.method.model.eval()
    with torch.no_grad():
        ours = model(*inputs)
    assert ours.shape == (2, 16, 64)
    torch.testing.assert_close(ours, independent_aligngen_forward(handset, *inputs), rtol=1e-4, atol=1e-5)


def test_trained_aligngen_forward_equals_independent_computation(trained):
    """After 3 training steps the model must still be the pretrained FLUX plus its trainable parts."""
    trainer, _ = trained
    ups = live_lora_ups(trainer.method.model.trainable_state_dict())
    assert len(ups) == 7 and all(float(u.abs().max()) > 1e-5 for u in ups.values()), \
        "the LoRA up matrices must be non-zero for this test to mean anything"
    inputs = random_inputs()
    model = trainer.method.model.eval()
    with torch.no_grad():
        ours = model(*inputs)
    torch.testing.assert_close(ours, independent_aligngen_forward(trainer, *inputs), rtol=1e-4, atol=1e-5)


def test_training_updates_only_the_trainable_parts(trained):
    """The optimizer holds exactly the exported tensors; every FLUX weight is still the pretrained one."""
    from diffusers import FluxTransformer2DModel

    trainer, _ = trained
    model = trainer.method.model
    trainable = {id(p) for p in (model.learned_token, *model.dem.parameters())}
    trainable |= {id(p) for m in model.lora_modules.values() for p in (m.down.weight, m.up.weight)}
    optimized = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in trainable]
    assert optimized == [], f"frozen weights handed to the optimizer: {optimized}"
    pretrained = FluxTransformer2DModel.from_pretrained(trainer.model_path, subfolder="transformer")
    from refcustom.train.attention import fuse_attention
    fuse_attention(pretrained)
    expected = pretrained.state_dict()
    current = {k.replace(".base.", "."): v for k, v in trainer.parts.transformer.state_dict().items()
               if not k.endswith((".down.weight", ".up.weight"))}
    assert current.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(current[k], expected[k])] == []


def test_the_selective_mask_changes_the_forward(handset):
    trainer = handset
    noisy, reference, grids, context, pooled, sigma, guidance, _ = random_inputs()
    model = trainer.method.model.eval()
    with torch.no_grad():
        blocked = model(noisy, reference, grids, context, pooled, sigma, guidance, torch.zeros(2, 7, dtype=torch.bool))
        open_ = model(noisy, reference, grids, context, pooled, sigma, guidance, torch.ones(2, 7, dtype=torch.bool))
    assert (blocked - open_).abs().max() > 1e-4
    # Every text row a concept row = no mask at all: plain attention over the whole sequence.
    independent = independent_aligngen_forward(trainer, noisy, reference, grids, context, pooled, sigma, guidance,
                                               torch.ones(2, 7, dtype=torch.bool))
    torch.testing.assert_close(open_, independent, rtol=1e-4, atol=1e-5)


def test_training_uses_the_selective_mask_on_s_star_and_the_concept_name(trained, monkeypatch):
    """Every attention of a training loss runs selective attention; its concept rows are S* and the name."""
    import refcustom.train.attention as attention

    trainer, _ = trained
    method = trainer.method
    calls, texts = [], []
    real_attention, real_text = attention.selective_attention, method.text

    def spy_attention(q, k, v, **kwargs):
        calls.append(kwargs)
        return real_attention(q, k, v, **kwargs)

    def spy_text(prompts, concepts, redux, device):
        out = real_text(prompts, concepts, redux, device)
        texts.append((prompts, concepts, out[2]))
        return out

    monkeypatch.setattr(attention, "selective_attention", spy_attention)
    monkeypatch.setattr(method, "text", spy_text)
    trainer.evaluate(batches=1)  # the training loss, without the optimizer step
    transformer = trainer.parts.transformer
    assert len(calls) == len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    [(prompts, concepts, mask)] = texts
    assert all(torch.equal(c["concept_mask"].cpu(), mask) for c in calls)
    text_len = trainer.config.model.max_text_tokens
    assert all(c["text_len"] == text_len and c["reference_span"] == (text_len + 16, text_len + 20) for c in calls)
    tokenizer = method.prompts.t5_tokenizer
    s_star = tokenizer.convert_tokens_to_ids("S*")
    ids = method.prompts.t5_ids(prompts)
    for b, concept in enumerate(concepts):
        start = int((ids[b] == s_star).nonzero()[0])
        length = 1 + len(tokenizer(concept, add_special_tokens=False).input_ids)
        expected = torch.zeros(text_len, dtype=torch.bool)
        expected[start:start + length] = True
        assert torch.equal(mask[b], expected), (prompts[b], concept, mask[b])
        assert length >= 2 and f"S* {concept}" in prompts[b]


def test_aligngen_training_lowers_loss_and_moves_every_trainable_part(tmp_path, tiny_flux_dir, shapes):
    # No weight decay: a part can only move through its gradient.
    config = make_config(tmp_path / "run", tiny_flux_dir, shapes, stages=[{"name": "train", "steps": 20}],
                         optim={"learning_rate": 2e-3, "weight_decay": 0.0},
                         aligngen={"reference_dropout": 0.0, "concept_substitution": 0.0})
    trainer = Trainer(config)
    initial = trainer.method.model.trainable_state_dict()
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["loss"] < before["loss"], (before, after)
    final = trainer.method.model.trainable_state_dict()
    moved = lambda key: not torch.equal(initial[key], final[key])  # noqa: E731
    assert moved("learned_token")
    for layer in ("dem.self_attn.to_out", "dem.cross_attn.to_out", "dem.mlp.2"):
        assert moved(f"{layer}.weight") and moved(f"{layer}.bias"), layer
    assert len([k for k in initial if k.endswith("lora_up.weight")]) == 4 * 2  # 2 per double and single block
    ups = live_lora_ups(initial)
    assert len(ups) == 7 and [k for k in ups if not moved(k)] == []
    # The parts that cannot reach the loss stay exactly at their zero init (no gradient, no weight decay).
    assert all(not v.any() for v in dead_lora_parts(final).values())


def test_aligngen_resume_is_bit_exact(tmp_path, tiny_flux_dir, shapes):
    overrides = {"stages": [{"name": "train", "steps": 12}], "run": {"checkpoint_every": 4},
                 "aligngen": {"reference_dropout": 0.5, "concept_substitution": 0.5}}
    Trainer(make_config(tmp_path / "whole", tiny_flux_dir, shapes, **overrides)).train()
    split = make_config(tmp_path / "split", tiny_flux_dir, shapes, **overrides)
    assert Trainer(split).train(max_steps=8) is None  # interrupted: checkpoint at 8, no export
    assert [p.name for p in Trainer(split).checkpoint_dirs()] == ["step-00000004", "step-00000008"]
    Trainer(split).train()  # a new process resumes from step 8 (mid-epoch: 4 batches per epoch)
    whole_log, split_log = log_lines(tmp_path / "whole"), log_lines(tmp_path / "split")
    assert [r["step"] for r in split_log] == list(range(1, 13))
    assert split_log == whole_log
    a, b = load_file(str(tmp_path / "whole" / EXPORT)), load_file(str(tmp_path / "split" / EXPORT))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_aligngen_export_layout(trained):
    from refcustom.train.aligngen_model import reference_lora_targets

    trainer, path = trained
    assert path is not None and Path(path).name == EXPORT
    exported = load_file(str(path))
    assert all(k.startswith("aligngen.") for k in exported)
    assert exported["aligngen.learned_token"].shape == (1, 32)
    targets = reference_lora_targets(trainer.parts.transformer)
    lora = {k for k in exported if k.startswith("aligngen.lora.")}
    assert lora == {f"aligngen.lora.{t}.lora_{p}.weight" for t in targets for p in ("down", "up")}
    transformer = trainer.parts.transformer
    for t in targets:
        base = transformer.get_submodule(t).base
        assert exported[f"aligngen.lora.{t}.lora_down.weight"].shape == (RANK, base.in_features)
        assert exported[f"aligngen.lora.{t}.lora_up.weight"].shape == (base.out_features, RANK)
    dem = {k.removeprefix("aligngen.dem."): v for k, v in exported.items() if k.startswith("aligngen.dem.")}
    assert set(exported) == lora | {"aligngen.learned_token"} | {f"aligngen.dem.{k}" for k in dem}
    loaded = DeviationExtractionModule.from_state_dict(dem, heads=DEM_HEADS)
    assert loaded.config == trainer.method.model.dem.config
    state = trainer.method.model.trainable_state_dict()
    assert all(torch.equal(exported[f"aligngen.{k}"], v) for k, v in state.items())
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert meta["refcustom.mode"] == "aligngen"
    assert meta["refcustom.rank"] == str(RANK)
    assert float(meta["refcustom.lora_scale"]) == trainer.method.model.lora_scale == 1.0
    assert meta["refcustom.dem_heads"] == str(DEM_HEADS)
    assert meta["refcustom.learned_token"] == "S*"


def test_prompt_with_token_writes_s_star_before_the_concept():
    method = AlignGenMethod.__new__(AlignGenMethod)  # prompt_with_token only reads the token
    method.token = "S*"
    assert method.prompt_with_token("a photo of a red circle", "red circle", 1) == "a photo of a S* red circle"
    assert method.prompt_with_token("A Red Circle here", "red circle", 1) == "A S* Red Circle here"
    with pytest.raises(ValueError, match="line 5"):
        method.prompt_with_token("a blue square", "red circle", 5)


def hand_dataset(folder: Path, shapes: Path, lines: list[dict | None]) -> Path:
    """metadata.jsonl over the synthetic PNGs; None writes a blank line (line numbers count it)."""
    folder.mkdir(parents=True)
    for sub in ("targets", "refs"):
        (folder / sub).symlink_to(shapes / sub, target_is_directory=True)
    (folder / "metadata.jsonl").write_text("".join("\n" if x is None else json.dumps(x) + "\n" for x in lines))
    return folder


def record(i: int, prompt: str, concepts=None, references=1) -> dict:
    line = {"image": f"targets/{i:04d}.png", "references": [f"refs/{i:04d}_1.png"] * references, "prompt": prompt}
    if concepts is not None:
        line["concepts"] = concepts
    return line


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (record(1, "a blue square on a plain background", ["red circle", "circle"]),
         r"line 3: the prompt .* does not contain the concept name 'red circle'"),
        (record(1, "a red circle on a plain background"), r"line 3: AlignGen needs a 'concepts' list"),
    ],
    ids=["concept-not-in-prompt", "no-concepts"],
)
def test_prompt_errors_name_the_metadata_line(tmp_path, tiny_flux_dir, shapes, second, message):
    good = record(0, "a red circle on a plain background", ["red circle", "circle"])
    data = hand_dataset(tmp_path / "data", shapes, [good, None, second])
    config = make_config(tmp_path / "run", tiny_flux_dir, data, aligngen={"concept_substitution": 0.0})
    with pytest.raises(ValueError, match=message):
        Trainer(config).train(max_steps=1)


def test_two_references_are_refused(tmp_path, tiny_flux_dir, shapes):
    line = record(0, "a red circle on a plain background", ["red circle"], references=2)
    data = hand_dataset(tmp_path / "data", shapes, [line, line])
    with pytest.raises(ValueError, match="one reference; this batch has 2"):
        Trainer(make_config(tmp_path / "run", tiny_flux_dir, data)).train(max_steps=1)
