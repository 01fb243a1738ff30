"""Every model file the shipped workflows name: where it goes, where it comes from, how big, gated or not.

The one source for the fetcher (scripts/fetch_weights.py), the workflows' files notes and "models"
download links (scripts/workflow_build/blocks.py) and the README's weights table (its rows are this
file's `markdown()` output; tests/server/test_weights.py checks all of them against this table and the
table against workflows/api/*.json). Stdlib only: it is imported as `weights_table` (scripts/ on
sys.path), as `refcustom.scripts.weights_table`, or loaded by path.

Sizes are approximate (decimal MB/GB as the hub lists them), read from public hub listings; no hub is
reachable where this was written. `size_checked=False` marks a size that no listing showed (the two
DreamO v1.1 LoRAs: the repo's 5.5 GB total minus the listed files, shared/notes/dreamo-reference.md 1.4;
Kontext: FLUX.1-dev's 11.9B parameters in bf16). The fetcher compares files with the hub's own
metadata, never with these numbers.

    python scripts/weights_table.py     # print the README's weights table
"""

from __future__ import annotations

from dataclasses import dataclass

HUB = "https://huggingface.co"
REVISION = "main"
TRAIN_ALIGNGEN = "python -m refcustom.train train --config train/configs/aligngen_flux1_dev.yaml"

# Every workflow in workflows/api/, by what it needs.
KONTEXT = ("kontext_normalized_guidance",)
ALIGNGEN = ("aligngen_normalized_guidance", "aligngen_single_concept")
TURBO = ("dreamo_normalized_guidance", "dreamo_turbo")
DREAMO = ("dreamo_id", "dreamo_ip", "dreamo_multi_reference", "dreamo_style", "dreamo_tryon") + TURBO
SYNCD = ("syncd_consistent_batch", "syncd_reference")
FLUX_DEV = tuple(sorted(ALIGNGEN + DREAMO + SYNCD))
EVERY = tuple(sorted(FLUX_DEV + KONTEXT))
QUICK_START = "dreamo_ip"  # scripts/quickstart.sh's workflow: the fetcher's default


@dataclass(frozen=True)
class Weight:
    """One model file. name: as the workflows' loaders name it, relative to models/<folder>/ (it may hold a
    subfolder: v1.1/...). repo/path: hub repository and path in it (None: no public source)."""

    name: str
    folder: str
    repo: str | None
    path: str | None
    approx_mb: int | None
    gated: bool
    workflows: tuple[str, ...]
    size_checked: bool = True

    def __post_init__(self):
        if (self.repo is None) != (self.path is None):
            raise ValueError(f"{self.name}: give both repo and path, or neither (got {self.repo!r}, {self.path!r})")
        unknown = sorted(set(self.workflows) - set(EVERY))
        if unknown:
            raise ValueError(f"{self.name}: unknown workflows {unknown}; known: {list(EVERY)}")

    @property
    def relpath(self) -> str:
        """Path under models/: '<folder>/<name>'."""
        return f"{self.folder}/{self.name}"

    @property
    def url(self) -> str | None:
        """The hub's download link (None when there is no public source)."""
        return f"{HUB}/{self.repo}/resolve/{REVISION}/{self.path}" if self.repo else None

    @property
    def page(self) -> str | None:
        """The repository's page: where a gated licence is accepted."""
        return f"{HUB}/{self.repo}" if self.repo else None

    @property
    def size_label(self) -> str:
        if self.approx_mb is None:
            return "n/a"
        size = f"{self.approx_mb / 1000:.1f} GB" if self.approx_mb >= 1000 else f"{self.approx_mb} MB"
        return f"~{size}" + ("" if self.size_checked else " (unconfirmed)")

    @property
    def source(self) -> str:
        """'repo' or 'repo, file <path>' when the file is renamed; for a file without public source, how to
        make it."""
        if self.repo is None:
            return f"none public: train it (`{TRAIN_ALIGNGEN}`)"
        return self.repo if self.path == self.name else f"{self.repo}, file `{self.path}`"


WEIGHTS = (
    Weight("flux1-dev.safetensors", "diffusion_models", "black-forest-labs/FLUX.1-dev", "flux1-dev.safetensors",
           23_800, True, FLUX_DEV),
    Weight("flux1-kontext-dev.safetensors", "diffusion_models", "black-forest-labs/FLUX.1-Kontext-dev",
           "flux1-kontext-dev.safetensors", 23_800, True, KONTEXT, size_checked=False),
    Weight("t5xxl_fp16.safetensors", "text_encoders", "comfyanonymous/flux_text_encoders", "t5xxl_fp16.safetensors",
           9_790, False, EVERY),
    Weight("clip_l.safetensors", "text_encoders", "comfyanonymous/flux_text_encoders", "clip_l.safetensors",
           246, False, EVERY),
    Weight("ae.safetensors", "vae", "black-forest-labs/FLUX.1-dev", "ae.safetensors", 335, True, EVERY),
    Weight("dreamo.safetensors", "dreamo", "ByteDance/DreamO", "dreamo.safetensors", 478, False, DREAMO),
    Weight("dreamo_cfg_distill.safetensors", "dreamo", "ByteDance/DreamO", "dreamo_cfg_distill.safetensors",
           478, False, DREAMO),
    Weight("v1.1/dreamo_sft_lora.safetensors", "dreamo", "ByteDance/DreamO", "v1.1/dreamo_sft_lora.safetensors",
           600, False, DREAMO, size_checked=False),
    Weight("v1.1/dreamo_dpo_lora.safetensors", "dreamo", "ByteDance/DreamO", "v1.1/dreamo_dpo_lora.safetensors",
           600, False, DREAMO, size_checked=False),
    Weight("flux-turbo.safetensors", "loras", "alimama-creative/FLUX.1-Turbo-Alpha",
           "diffusion_pytorch_model.safetensors", 694, False, TURBO),
    Weight("flux1-redux-dev.safetensors", "style_models", "black-forest-labs/FLUX.1-Redux-dev",
           "flux1-redux-dev.safetensors", 129, True, ALIGNGEN),
    Weight("sigclip_vision_patch14_384.safetensors", "clip_vision", "Comfy-Org/sigclip_vision_384",
           "sigclip_vision_patch14_384.safetensors", 857, False, ALIGNGEN),
    Weight("aligngen_lora.safetensors", "aligngen", None, None, None, False, ALIGNGEN),
)
BY_NAME = {w.name: w for w in WEIGHTS}


def for_workflows(names) -> list[Weight]:
    """The table's entries the given workflows use, in table order. Unknown names raise ValueError."""
    names = list(names)
    unknown = sorted(set(names) - set(EVERY))
    if unknown:
        raise ValueError(f"unknown workflow(s) {unknown}; the shipped ones are: {', '.join(EVERY)}")
    return [w for w in WEIGHTS if set(w.workflows) & set(names)]


def _workflow_list(names: tuple[str, ...]) -> str:
    """'all', 'all but `x`', '`dreamo_*` (7)' or the names."""
    left_out = [n for n in EVERY if n not in names]
    family = names[0].split("_")[0] + "_"
    if not left_out:
        return "all"
    if len(left_out) <= 2:
        return "all but " + ", ".join(f"`{n}`" for n in left_out)
    if len(names) > 2 and set(names) == {n for n in EVERY if n.startswith(family)}:
        return f"`{family}*` ({len(names)})"
    return ", ".join(f"`{n}`" for n in names)


def markdown() -> str:
    """The README's weights table."""
    rows = ["| file (under `models/`) | approx. size | source (Hugging Face repo) | gated | used by |",
            "|---|---|---|---|---|"]
    for w in WEIGHTS:
        used = _workflow_list(w.workflows)
        gated = "**yes**" if w.gated else "no"
        rows.append(f"| `{w.relpath}` | {w.size_label} | {w.source} | {gated} | {used} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
