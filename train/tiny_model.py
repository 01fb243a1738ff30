"""A small random FLUX.1-dev (and FLUX.1-Redux) written as a real diffusers folder.

The trainer only knows one way to load a model: `from_pretrained` on a diffusers FLUX folder. The
'tiny' model is such a folder, written here with the same component classes as FLUX.1-dev
(FluxTransformer2DModel, AutoencoderKL with FLUX's 16 channels, shift and scale, CLIP-L and T5
encoders, their tokenizers, FlowMatchEulerDiscreteScheduler), only narrow. So the quick start, the
tests and the benchmarks run offline through exactly the code a real FLUX.1-dev takes.

Its sizes match the tiny FLUX the ComfyUI tests build (tests/fixtures/tiny_host_models.py): hidden
64, 2 heads, 2 double + 2 single blocks, RoPE axes (4, 14, 14), T5 and CLIP 32 wide. The tokenizers
are word-level over a small vocabulary (saved as `tokenizer.json`, read by AutoTokenizer), since
the real SentencePiece/BPE vocabularies cannot be downloaded here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

TINY = {"hidden": 64, "heads": 2, "depth": 2, "depth_single": 2, "axes": (4, 14, 14), "text_width": 32}
FLUX_VAE_SCALE = 0.3611
FLUX_VAE_SHIFT = 0.1159
SPECIAL = ["<pad>", "</s>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
WORDS = (
    "a an the of and on in at with from to is are photo picture image next by near shape shapes plain background "
    "red green blue yellow magenta cyan white black gray grey orange purple pink brown light dark "
    "square circle triangle cube ball box object thing toy dog cat person woman man face guitar acoustic musical "
    "instrument beach park street room table two column left right generate same style one small big"
).split()


def _word_tokenizer(bos: str | None, eos: str, pad: str, max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    single = f"{bos} $A {eos}" if bos else f"$A {eos}"
    special = [(eos, vocab[eos])] + ([(bos, vocab[bos])] if bos else [])
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=special)
    kwargs = {"bos_token": bos} if bos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token=pad, eos_token=eos, model_max_length=max_length, **kwargs
    )


@contextlib.contextmanager
def _own_rng(seed: int):
    """Seed the random init from `seed` inside a fork of torch's RNG, so writing a tiny model (which a
    Trainer may do mid-setup) never reseeds the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def write_tiny_flux(folder: str | Path, seed: int = 0) -> Path:
    """Write a random tiny FLUX.1-dev diffusers folder (deterministic from `seed`); returns it."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    with _own_rng(seed):  # modules draw their init from the global RNG; the caller's is kept
        width = TINY["text_width"]
        vocab = len(SPECIAL) + len(WORDS)
        FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=TINY["depth"], num_single_layers=TINY["depth_single"],
            attention_head_dim=TINY["hidden"] // TINY["heads"], num_attention_heads=TINY["heads"],
            joint_attention_dim=width, pooled_projection_dim=width, guidance_embeds=True, axes_dims_rope=TINY["axes"],
        ).save_pretrained(folder / "transformer")
        AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16, layers_per_block=1, norm_num_groups=8,
            block_out_channels=(16, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=FLUX_VAE_SCALE, shift_factor=FLUX_VAE_SHIFT,
            use_quant_conv=False, use_post_quant_conv=False,
        ).save_pretrained(folder / "vae")
        CLIPTextModel(CLIPTextConfig(
            vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, projection_dim=width, pad_token_id=SPECIAL.index("<|endoftext|>"),
            bos_token_id=SPECIAL.index("<|startoftext|>"), eos_token_id=SPECIAL.index("<|endoftext|>"),
        )).save_pretrained(folder / "text_encoder")
        T5EncoderModel(T5Config(
            vocab_size=vocab, d_model=width, d_kv=16, d_ff=2 * width, num_layers=2, num_heads=2,
            feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )).save_pretrained(folder / "text_encoder_2")
        _word_tokenizer("<|startoftext|>", "<|endoftext|>", "<|endoftext|>", 77).save_pretrained(folder / "tokenizer")
        _word_tokenizer(None, "</s>", "<pad>", 512).save_pretrained(folder / "tokenizer_2")
        FlowMatchEulerDiscreteScheduler(shift=1.0).save_pretrained(folder / "scheduler")
        (folder / "model_index.json").write_text('{"_class_name": "FluxPipeline", "refcustom_tiny": true}\n')
    return folder


def write_tiny_redux(folder: str | Path, seed: int = 0) -> Path:
    """A random FLUX.1-Redux folder matching the tiny FLUX: SigLIP vision tower + Redux projector to T5 width."""
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipVisionConfig, SiglipVisionModel

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    with _own_rng(seed + 1):  # modules draw their init from the global RNG; the caller's is kept
        siglip_width = 48
        SiglipVisionModel(SiglipVisionConfig(
            hidden_size=siglip_width, intermediate_size=2 * siglip_width, num_hidden_layers=1, num_attention_heads=2,
            image_size=48, patch_size=16,
        )).save_pretrained(folder / "image_encoder")
        ReduxImageEncoder(redux_dim=siglip_width, txt_in_features=TINY["text_width"]).save_pretrained(
            folder / "image_embedder"
        )
        (folder / "model_index.json").write_text('{"_class_name": "FluxPriorReduxPipeline", "refcustom_tiny": true}\n')
    return folder
