"""Time of one DreamO training step on a FLUX.1-size model, and its peak GPU memory.

Builds diffusers' FluxTransformer2DModel with the FLUX.1-dev configuration (19 double + 38 single
blocks, 24 heads x 128, T5 width 4096, pooled 768, guidance embedding, RoPE axes 16/56/56) with
random weights directly on the device in bf16, wraps it in the trainer's DreamOFlux (fused-qkv peft
LoRA on the official targets, rank 128, DreamO condition/index embeddings, placeholder table,
query/key capture in double blocks 2, 8 and 14), and times what one optimizer step of
train/dreamo_method.py does with model.weight_dtype bfloat16 and optim.mixed_precision bf16 (the
forward under bf16 autocast, fp32 latents, as accelerate runs it): forward over a 1024x1024 target (4096 tokens) + one 512x512
reference (1024 tokens) + 512 text tokens at batch 1, the three losses (flow matching, L_route
on the captured queries/keys through split_captured, L_holder), backward and an AdamW step. Text
encoders, VAE and data loading are not part of it (the trainer caches latents and most prompts).
With one reference L_holder is identically 0 (a softmax over one placeholder key), as in training;
it is still computed. The inputs are random tensors, so the loss values mean nothing.

Reports the median step time over --steps steps after --warmup steps, the memory held by the
weights, and torch.cuda.max_memory_allocated over the timed steps (weights, AdamW state,
activations, gradients) when on CUDA. --checkpointing recomputes block activations in the
backward pass (model.gradient_checkpointing in the training config). No target; it is read.

    ~/ComfyUI/.venv/bin/python bench/flux_training_step.py [--checkpointing]     # GPU, FLUX.1 size
    ~/ComfyUI/.venv/bin/python bench/flux_training_step.py --preset tiny         # CPU smoke check

The FLUX.1 preset is 11.90 B frozen parameters (22.2 GiB in bf16) and 239.15 M trainable ones (LoRA
rank 128: 239.1 M; embeddings and placeholders: 0.06 M), counted on the meta device. It has not been
run on a GPU yet (the session that wrote it had none); without --checkpointing the activations of
5632 tokens through 57 blocks may not fit an 80 GB GPU, and an out-of-memory error is reported with
the peak reached. --preset tiny uses the tiny FLUX's sizes (hidden 64, 2 + 2 blocks, 64 px target,
32 px reference, 32 text tokens, rank 8, routing layers 0 and 1) and runs on CPU: a smoke check of
the step, not a timing anyone should read.
"""

from __future__ import annotations

import argparse
import statistics
import time

from random_flux import import_package

PRESETS = {
    # transformer config, LoRA rank, routing layers, target / reference pixels, text tokens
    "flux": dict(
        transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        rank=128, routing_layers=[2, 8, 14], image=1024, reference=512, text=512, dtype="bfloat16"),
    "tiny": dict(
        transformer=dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32,
                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                         guidance_embeds=True, axes_dims_rope=(4, 14, 14)),
        rank=8, routing_layers=[0, 1], image=64, reference=32, text=32, dtype="float32"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="flux")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                        help="weights and activations (default: the preset's; flux: bfloat16)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing of the blocks")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lr", type=float, default=4e-5)
    args = parser.parse_args()
    cfg = PRESETS[args.preset]

    import_package()
    import torch
    from diffusers import FluxTransformer2DModel

    from refcustom.train import losses
    from refcustom.train.dreamo_model import DreamOFlux, placeholder_keys, split_captured

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or cfg["dtype"])
    cuda = device.type == "cuda"
    autocast = dtype == torch.bfloat16
    torch.manual_seed(0)

    start = time.perf_counter()
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random init straight in the training dtype, on the device
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**cfg["transformer"])
    finally:
        torch.set_default_dtype(default_dtype)
    if any(p.dtype != dtype for p in transformer.parameters()):
        transformer.to(dtype=dtype)
    width = cfg["transformer"]["joint_attention_dim"]
    model = DreamOFlux(transformer, t5_width=width, rank=cfg["rank"], alpha=None,
                       routing_layers=cfg["routing_layers"])
    if args.checkpointing:
        transformer.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    if cuda:
        torch.cuda.synchronize(device)
    build_seconds = time.perf_counter() - start
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in params)
    trainable_dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})

    # One sample: noisy target tokens, one reference, text, pooled text, noise level, guidance.
    g = torch.Generator().manual_seed(1)
    side, ref_side = cfg["image"] // 16, cfg["reference"] // 16  # token grid (VAE 8 x patch 2)
    noise_tokens, ref_tokens = side * side, ref_side * ref_side
    latents = torch.randn(1, noise_tokens, 64, generator=g).mul(0.5).to(device)
    reference = torch.randn(1, ref_tokens, 64, generator=g).mul(0.5).to(device)
    context = torch.randn(1, cfg["text"], width, generator=g).mul(0.1).to(device, dtype)
    pooled = torch.randn(1, cfg["transformer"]["pooled_projection_dim"], generator=g).to(device)
    guidance = torch.full((1,), 3.5, device=device)
    grids = [(side, side), (ref_side, ref_side)]
    mask = torch.zeros(1, 1, side, side)
    mask[:, :, side // 4: side // 2, side // 3: 2 * side // 3] = 1.0  # the reference's subject box
    route_target = mask.reshape(1, 1, -1).to(device)
    route_valid = torch.ones(1, 1, dtype=torch.bool, device=device)
    holder_positions = torch.tensor([[3]])  # [ref#1]'s T5 position
    holder_valid = torch.ones(1, dtype=torch.bool, device=device)

    def step() -> dict[str, float]:
        noise = torch.randn(latents.shape, generator=g).to(device)
        sigma = torch.rand(1, generator=g).clamp(0.05, 0.95).to(device)
        noisy = losses.noisy_latents(latents, noise, sigma)
        # As accelerate's mixed_precision="bf16" runs the trainer's forward (fp32 latents, bf16 weights).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            prediction = model(noisy, [reference], [1], grids, context, pooled, sigma, guidance, capture=True)
        prediction = prediction.float()
        diff = losses.flow_matching_loss(prediction, latents, noise)
        split = [split_captured(c, noise_tokens, [ref_tokens]) for c in model.captured]
        route = losses.routing_loss(split, route_target, route_valid)
        holder = losses.placeholder_loss(
            [(q, placeholder_keys(c, holder_positions)) for (q, _), c in zip(split, model.captured, strict=True)],
            holder_valid)
        model.captured = []
        loss = diff + 0.1 * route + 0.1 * holder
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {name: float(value.detach()) for name, value in
                (("loss", loss), ("diff", diff), ("route", route), ("holder", holder))}

    weights_bytes = torch.cuda.memory_allocated(device) if cuda else None
    times, terms = [], {}
    try:
        for _ in range(args.warmup):
            step()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.steps):
            begin = time.perf_counter()
            terms = step()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - begin)
    except torch.OutOfMemoryError:
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
        raise SystemExit(f"out of memory on {device} (peak allocated {peak:.1f} GiB, weights + LoRA "
                         f"{(weights_bytes or 0) / 2**30:.1f} GiB); try --checkpointing or a larger GPU") from None

    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    c = cfg["transformer"]
    print(f"device={name} dtype={str(dtype).removeprefix('torch.')} torch {torch.__version__} preset={args.preset} "
          f"blocks={c['num_layers']}+{c['num_single_layers']} hidden={c['num_attention_heads'] * c['attention_head_dim']} "
          f"checkpointing={'on' if args.checkpointing else 'off'} autocast={'bf16' if autocast else 'off'}")
    print(f"tokens: text {cfg['text']} + target {noise_tokens} ({cfg['image']} px) + reference {ref_tokens} "
          f"({cfg['reference']} px) = {cfg['text'] + noise_tokens + ref_tokens}; batch 1; LoRA rank {cfg['rank']}; "
          f"routing layers {cfg['routing_layers']}")
    print(f"parameters: frozen {frozen / 1e6:,.1f} M, trainable {trainable / 1e6:.2f} M ({', '.join(trainable_dtypes)}); "
          f"built in {build_seconds:.1f} s")
    print(f"{'':<30}{'value':>12}")
    print(f"{'median step (s)':<30}{statistics.median(times):>12.4f}")
    print(f"{'min / max step (s)':<30}{min(times):>6.3f} / {max(times):.3f}")
    if cuda:
        print(f"{'weights + LoRA (GiB)':<30}{weights_bytes / 2**30:>12.2f}")
        print(f"{'peak allocated (GiB)':<30}{torch.cuda.max_memory_allocated(device) / 2**30:>12.2f}")
        print(f"{'peak reserved (GiB)':<30}{torch.cuda.max_memory_reserved(device) / 2**30:>12.2f}")
    else:
        print(f"{'peak memory':<30}{'(CUDA only)':>12}")
    print("last step losses: " + ", ".join(f"{k} {v:.4f}" for k, v in terms.items())
          + ("" if all(v == v and abs(v) != float("inf") for v in terms.values()) else "  (NOT FINITE)"))
    print(f"timed {args.steps} steps after {args.warmup} warm-up steps: {', '.join(f'{t:.3f}' for t in times)}")


if __name__ == "__main__":
    main()
