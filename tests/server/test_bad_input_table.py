"""Bad input over the HTTP API, one table across all ten nodes (tier 2, headless server).

Each row edits a shipped API workflow (on the fixture models, shrunk) into a bad one and names the node
that must fail and the fragments its message must carry: the problem and the fix. For every row:

- POST /prompt fails in that node (our node, or the sampler for a check our patch makes while
  sampling) with those fragments;
- nothing is written outside ComfyUI's own folders (the pack's checkout and the server's base folder,
  but for output/, temp/, input/ and user/, are the same file for file);
- the same server then runs the good workflow and gives the image a fresh model gives (what a freshly
  started server would give: the fixture loader's `instance` input makes a model object no prompt has
  touched), pixel for pixel.

The trainer's command line has its own rows at the end (tests run it as a user would). The bad inputs
of the user-flow test (test_api_workflows.py, one per shipped workflow, some through an uploaded image)
run inside that flow.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from refcustom.tests.comfy_host import REPO_ROOT

from . import shipped_workflows
from .patch_matrix import on_fresh_model
from .shipped_workflows import WORKFLOWS, node_of

pytestmark = pytest.mark.tier2

NAN = math.nan


@dataclass(frozen=True)
class BadInput:
    name: str
    workflow: str  # workflows/api/<workflow>.json
    edit: Callable[[dict], None]
    node: str  # the class_type that must report the error
    says: tuple[str, ...]  # fragments of its message: the problem and the fix

    def __str__(self):
        return self.name


def set_input(class_type: str, name: str, value, n: int = 0) -> Callable[[dict], None]:
    def edit(graph):
        graph[node_of(graph, class_type, n)]["inputs"][name] = value
    return edit


def edits(*steps: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(graph):
        for step in steps:
            step(graph)
    return edit


def solid_mask(node_id: str, width, height, value=1.0) -> Callable[[dict], None]:
    def edit(graph):
        graph[node_id] = {"class_type": "SolidMask", "inputs": {"value": value, "width": width, "height": height}}
    return edit


def mask_of_reference_size(value: float, class_type="RefCustom_DreamOReference") -> Callable[[dict], None]:
    def edit(graph):
        image = graph[node_of(graph, class_type)]["inputs"]["image"]
        graph["size"] = {"class_type": "GetImageSize", "inputs": {"image": image}}
        solid_mask("size_mask", ["size", 0], ["size", 1], value)(graph)
    return edit


def chain_references(count: int) -> Callable[[dict], None]:
    def edit(graph):
        reference = node_of(graph, "RefCustom_DreamOReference")
        consumers = [(k, name) for k, v in graph.items() for name, link in v["inputs"].items()
                     if link == [reference, 0] and k != reference]
        previous = reference
        for i in range(count):
            new_id = f"extra_ref_{i}"
            graph[new_id] = copy.deepcopy(graph[reference])
            graph[new_id]["inputs"]["conditioning"] = [previous, 0]
            previous = new_id
        for k, name in consumers:
            graph[k]["inputs"][name] = [previous, 0]
    return edit


def resized_reference(width: int, height: int, class_type="RefCustom_DreamOReference", name="image"):
    def edit(graph):
        node = node_of(graph, class_type)
        graph["resized"] = {"class_type": "ImageScale", "inputs": {
            "image": graph[node]["inputs"][name], "upscale_method": "nearest-exact", "width": width,
            "height": height, "crop": "disabled"}}
        graph[node]["inputs"][name] = ["resized", 0]
    return edit


def repeated_reference(class_type: str, amount: int, name="image") -> Callable[[dict], None]:
    def edit(graph):
        node = node_of(graph, class_type)
        graph["repeated"] = {"class_type": "RepeatImageBatch", "inputs": {"image": graph[node]["inputs"][name],
                                                                          "amount": amount}}
        graph[node]["inputs"][name] = ["repeated", 0]
    return edit


def kontext_reference_latent(after: bool) -> Callable[[dict], None]:
    """A core ReferenceLatent (what a Flux Kontext graph adds) on the DreamO reference's conditioning: on its
    output (after) or on its input (before), with the same image VAE-encoded."""
    def edit(graph):
        reference = node_of(graph, "RefCustom_DreamOReference")
        inputs = graph[reference]["inputs"]
        graph["kontext_latent"] = {"class_type": "VAEEncode", "inputs": {"pixels": inputs["image"], "vae": inputs["vae"]}}
        if after:
            consumers = [(k, name) for k, v in graph.items() for name, link in v["inputs"].items()
                         if link == [reference, 0]]
            graph["kontext"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": [reference, 0],
                                                                             "latent": ["kontext_latent", 0]}}
            for k, name in consumers:
                graph[k]["inputs"][name] = ["kontext", 0]
        else:
            graph["kontext"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": inputs["conditioning"],
                                                                             "latent": ["kontext_latent", 0]}}
            inputs["conditioning"] = ["kontext", 0]
    return edit


# Bad weight files the `bad_files` fixture writes into the server's model folders.
BAD_SHAPE_LORA = "refcustom_bad_shape_lora.safetensors"
NAN_DREAMO = "refcustom_nan_dreamo.safetensors"
PICKLE_DREAMO = "refcustom_pickle_dreamo.safetensors"
NAN_ALIGNGEN = "refcustom_nan_aligngen.safetensors"


DREAMO = "RefCustom_DreamOLoader"
REFERENCE = "RefCustom_DreamOReference"
TEXT = "RefCustom_DreamOTextEncode"
TRUE_CFG = "RefCustom_TrueCFGGuider"
NORMALIZED = "RefCustom_NormalizedGuidanceGuider"
BRANCHES = "RefCustom_GuidanceBranches"
MASKED = "RefCustom_MaskedSharedAttention"
SHARED_REFERENCE = "RefCustom_SharedAttentionReference"
ALIGNGEN = "RefCustom_AlignGenLoader"
ALIGNGEN_COND = "RefCustom_AlignGenConditioning"

CASES = [
    # ---- Load DreamO ----
    BadInput("dreamo_turbo_lora_as_dreamo_file", "dreamo_ip", set_input(DREAMO, "dreamo_file", "flux-turbo.safetensors"),
             DREAMO, ("flux-turbo.safetensors holds no DreamO embedding tables", "embedding.safetensors")),
    BadInput("dreamo_on_a_non_flux_model", "dreamo_ip",
             lambda g: g[node_of(g, "RefCustomTest_TinyFluxLoader")].update(class_type="RefCustomTest_TinyNonFluxLoader"),
             DREAMO, ("DreamO needs a FLUX.1 model",)),
    # ---- DreamO Reference ----
    BadInput("dreamo_tenth_reference", "dreamo_ip", chain_references(9),
             REFERENCE, ("too many references: DreamO tells at most 9 apart", "Remove a DreamO reference node")),
    BadInput("dreamo_mask_of_another_size", "dreamo_ip",
             edits(solid_mask("bad_mask", 40, 24), set_input(REFERENCE, "mask", ["bad_mask", 0])),
             REFERENCE, ("the MASK is 40x24 but its reference image is", "use the mask made from this image")),
    BadInput("dreamo_empty_mask", "dreamo_ip",
             edits(mask_of_reference_size(0.0), set_input(REFERENCE, "mask", ["size_mask", 0])),
             REFERENCE, ("the MASK is empty", "disconnect the mask")),
    BadInput("dreamo_style_with_a_mask", "dreamo_style",
             edits(mask_of_reference_size(1.0), set_input(REFERENCE, "mask", ["size_mask", 0])),
             REFERENCE, ("style references take no MASK", "pick task ip / try-on")),
    BadInput("dreamo_reference_too_small", "dreamo_ip", resized_reference(13, 9),
             REFERENCE, ("reference image is 13x9 px; it needs at least 16 px a side",)),
    BadInput("dreamo_reference_too_narrow", "dreamo_ip", resized_reference(400, 16),
             REFERENCE, ("a 400x16 reference is too narrow for ref_res 64", "Crop it closer to square or raise ref_res")),
    BadInput("dreamo_two_references_share_an_index", "dreamo_multi_reference", set_input(REFERENCE, "index", 1, n=1),
             REFERENCE, ("two references share a DreamO index", "Give each reference its own index")),
    # ---- DreamO Text Encode ----
    BadInput("dreamo_placeholder_without_a_number", "dreamo_ip", set_input(TEXT, "text", "a toy from [ref#] on a desk"),
             TEXT, ("placeholder '[ref#]' is not valid", "write [ref#1] .. [ref#9]")),
    BadInput("dreamo_placeholder_index_zero", "dreamo_ip", set_input(TEXT, "text", "a toy from [ref#0] on a desk"),
             TEXT, ("placeholder '[ref#0]' is not valid", "write [ref#1] .. [ref#9]")),
    BadInput("dreamo_placeholder_upper_case", "dreamo_ip", set_input(TEXT, "text", "a toy from [REF#1] on a desk"),
             TEXT, ("placeholder '[REF#1]' is not valid", "lower case: write [ref#1]")),
    BadInput("dreamo_placeholder_without_its_reference", "dreamo_ip", set_input(TEXT, "text", "a toy from [ref#9] on a desk"),
             "KSampler", ("names [ref#9] but its conditioning has no DreamO reference with that index",
                          "Add a DreamO Reference node with that index")),
    # ---- DreamO True CFG Guider ----
    BadInput("true_cfg_window_inverted", "dreamo_id",
             edits(set_input(TRUE_CFG, "start_step", 8), set_input(TRUE_CFG, "end_step", 2)),
             TRUE_CFG, ("start_step (8) must not exceed end_step (2)", "Lower start_step or raise end_step")),
    BadInput("true_cfg_first_step_guidance_on_a_non_flux_model", "dreamo_id",
             edits(set_input(TRUE_CFG, "first_step_guidance", 4.0),
                   lambda g: g[node_of(g, TRUE_CFG)]["inputs"].update(model=["non_flux", 0]),
                   lambda g: g.update(non_flux={**copy.deepcopy(g[node_of(g, "RefCustomTest_TinyFluxLoader")]),
                                                "class_type": "RefCustomTest_TinyNonFluxLoader"})),
             TRUE_CFG, ("this model embeds none", "Set first_step_guidance to 0")),
    # ---- Guidance branches / normalized guider ----
    BadInput("branches_given_another_prompt", "kontext_normalized_guidance",
             edits(lambda g: g.update(other_prompt={"class_type": "CLIPTextEncode", "inputs": {
                 "clip": g[node_of(g, "CLIPTextEncode")]["inputs"]["clip"], "text": "a completely different instruction"}}),
                 set_input(BRANCHES, "prompt", ["other_prompt", 0])),
             BRANCHES, ("the `prompt` input is not the text this conditioning was built from",
                        "Wire the text encode node at the start of the chain")),
    BadInput("dreamo_kontext_reference_latent_after_the_reference", "dreamo_ip", kontext_reference_latent(after=True),
             "KSampler", ("reference latent(s) that no DreamO Reference node added",
                          "Give the image to a DreamO Reference node instead")),
    BadInput("dreamo_kontext_reference_latent_before_the_reference", "dreamo_ip", kontext_reference_latent(after=False),
             REFERENCE, ("from a core ReferenceLatent node (FLUX Kontext's layout)",
                         "Give that image to DreamO instead of ReferenceLatent")),
    BadInput("dreamo_kontext_layout_after_the_reference", "dreamo_normalized_guidance",
             lambda g: (g.update(kontext_method={"class_type": "FluxKontextMultiReferenceLatentMethod", "inputs": {
                 "conditioning": g[node_of(g, "FluxGuidance")]["inputs"]["conditioning"],
                 "reference_latents_method": "index"}}),
                 g[node_of(g, "FluxGuidance")]["inputs"].update(conditioning=["kontext_method", 0])),
             "SamplerCustomAdvanced", ("DreamO references need the diagonal reference layout ('uxo')",
                                       "Remove the FluxKontextMultiReferenceLatentMethod")),
    # ---- Masked Shared Attention ----
    BadInput("masked_shared_attention_mask_count", "syncd_consistent_batch",
             set_input("RepeatImageBatch", "amount", 3),
             "KSampler", ("Masked Shared Attention got 3 masks for a batch of 4 images", "give one MASK per image")),
    BadInput("masked_shared_attention_even_dilation", "syncd_consistent_batch", set_input(MASKED, "dilation", 8),
             MASKED, ("dilation must be odd",)),
    # ---- Shared Attention Reference ----
    BadInput("shared_reference_mask_of_another_size", "syncd_reference",
             edits(solid_mask("reference_mask", 40, 24), set_input(SHARED_REFERENCE, "reference_mask", ["reference_mask", 0])),
             SHARED_REFERENCE, ("the reference mask is 40x24 but the reference is", "use the mask of this image")),
    BadInput("shared_reference_even_dilation", "syncd_reference", set_input(SHARED_REFERENCE, "dilation", 8),
             SHARED_REFERENCE, ("dilation must be odd",)),
    # ---- Load AlignGen / AlignGen Conditioning ----
    BadInput("aligngen_given_the_dreamo_file", "aligngen_single_concept",
             set_input(ALIGNGEN, "aligngen_file", "dreamo.safetensors"),
             ALIGNGEN, ("dreamo.safetensors is not an AlignGen file", "load it with Load DreamO (FLUX)")),
    BadInput("aligngen_prompt_without_the_concept", "aligngen_single_concept",
             set_input(ALIGNGEN_COND, "text", "a photo of a violin on a beach at sunset"),
             ALIGNGEN_COND, ("does not contain the concept name 'acoustic guitar'", "write the concept name in the prompt")),
    BadInput("aligngen_empty_concept", "aligngen_single_concept", set_input(ALIGNGEN_COND, "concept", "  "),
             ALIGNGEN_COND, ("concept",)),
    # ---- non-finite numbers over the API (JSON NaN passes ComfyUI's min/max check) ----
    BadInput("dreamo_strength_nan", "dreamo_ip", set_input(DREAMO, "dreamo_strength", NAN),
             DREAMO, ("Load DreamO (FLUX): dreamo_strength is nan, not a finite number", "Set dreamo_strength to a number between")),
    BadInput("dpo_strength_nan", "dreamo_ip", set_input(DREAMO, "dpo_strength", NAN),
             DREAMO, ("dpo_strength is nan, not a finite number",)),
    BadInput("aligngen_strength_nan", "aligngen_single_concept", set_input(ALIGNGEN, "lora_strength", NAN),
             ALIGNGEN, ("Load AlignGen (FLUX): lora_strength is nan", "Set lora_strength to a number between")),
    BadInput("true_cfg_nan", "dreamo_id", set_input(TRUE_CFG, "cfg", NAN),
             TRUE_CFG, ("DreamO True CFG Guider: cfg is nan", "Set cfg to a number between")),
    BadInput("normalized_text_scale_nan", "dreamo_normalized_guidance", set_input(NORMALIZED, "text_scale", NAN),
             NORMALIZED, ("text_scale is nan, not a finite number",)),
    BadInput("masked_shared_attention_sigma_nan", "syncd_consistent_batch", set_input(MASKED, "full_shared_above_sigma", NAN),
             MASKED, ("full_shared_above_sigma is nan, not a finite number",)),
    BadInput("shared_reference_sigma_nan", "syncd_reference", set_input(SHARED_REFERENCE, "full_shared_above_sigma", NAN),
             SHARED_REFERENCE, ("full_shared_above_sigma is nan, not a finite number",)),
    # ---- batches that do not pair (checked when sampling: the sampler node reports it) ----
    BadInput("dreamo_nine_images_in_one_reference", "dreamo_ip", repeated_reference(REFERENCE, 9),
             "KSampler", ("its batch of 9 reference images cannot pair with a latent batch of 1",
                          "one DreamO Reference node per reference image")),
    BadInput("dreamo_two_images_for_three_latents", "dreamo_ip",
             edits(repeated_reference(REFERENCE, 2), set_input("EmptySD3LatentImage", "batch_size", 3)),
             "KSampler", ("its batch of 2 reference images cannot pair with a latent batch of 3",)),
    BadInput("aligngen_two_images_for_three_latents", "aligngen_single_concept",
             edits(repeated_reference(ALIGNGEN_COND, 2), set_input("EmptySD3LatentImage", "batch_size", 3)),
             "KSampler", ("AlignGen Conditioning: its batch of 2 reference images cannot pair with a latent batch of 3",)),
    # ---- weight files that do not fit, or are not what they claim ----
    BadInput("dreamo_lora_of_the_wrong_shape", "dreamo_ip",
             edits(set_input(DREAMO, "turbo_lora", BAD_SHAPE_LORA), set_input(DREAMO, "turbo_strength", 1.0)),
             DREAMO, (BAD_SHAPE_LORA, "does not fit diffusion_model.", "Nothing was applied")),
    BadInput("dreamo_file_with_nan_weights", "dreamo_ip", set_input(DREAMO, "dreamo_file", NAN_DREAMO),
             DREAMO, (NAN_DREAMO, "holds NaN/inf values")),
    BadInput("pickle_renamed_safetensors", "dreamo_ip", set_input(DREAMO, "dreamo_file", PICKLE_DREAMO),
             DREAMO, (f"{PICKLE_DREAMO} is not a safetensors file", "renamed to .safetensors")),
    BadInput("aligngen_file_with_nan_weights", "aligngen_single_concept", set_input(ALIGNGEN, "aligngen_file", NAN_ALIGNGEN),
             ALIGNGEN, (NAN_ALIGNGEN, "holds NaN/inf values")),
]


@pytest.fixture(scope="module")
def bad_files(comfy_server):
    """Write the bad weight files next to the good fixture files of the session's server. Requested by the
    tests that need them (not autouse: in a random order the module's first test may be a trainer row,
    which has no server, and a module fixture that looked at that test once would never write them)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    def metadata(path):
        with safe_open(str(path), "pt") as f:
            return f.metadata()

    models = Path(comfy_server.base_dir) / "models"
    turbo = load_file(str(models / "loras" / "flux-turbo.safetensors"))
    key = sorted(k for k in turbo if k.endswith("lora_A.weight") or k.endswith("lora_down.weight"))[0]
    turbo[key] = torch.cat([turbo[key], turbo[key]], dim=1)  # the down matrix takes twice the input width
    save_file(turbo, str(models / "loras" / BAD_SHAPE_LORA), metadata(models / "loras" / "flux-turbo.safetensors"))
    dreamo = load_file(str(models / "dreamo" / "dreamo.safetensors"))
    poisoned = sorted(dreamo)[0]
    dreamo[poisoned] = dreamo[poisoned].clone()
    dreamo[poisoned].view(-1)[0] = float("nan")
    save_file(dreamo, str(models / "dreamo" / NAN_DREAMO), metadata(models / "dreamo" / "dreamo.safetensors"))
    torch.save({"weights": torch.zeros(2)}, str(models / "dreamo" / PICKLE_DREAMO))
    aligngen = load_file(str(models / "aligngen" / "aligngen_lora.safetensors"))
    poisoned = sorted(aligngen)[0]
    aligngen[poisoned] = aligngen[poisoned].clone()
    aligngen[poisoned].view(-1)[0] = float("inf")
    save_file(aligngen, str(models / "aligngen" / NAN_ALIGNGEN), metadata(models / "aligngen" / "aligngen_lora.safetensors"))


def cheap_graph(headless, workflow: str) -> dict:
    return shipped_workflows.cheap_graph(headless, WORKFLOWS / "api" / f"{workflow}.json", steps=1)


def pixels(server, graph) -> list:
    from PIL import Image

    entry = server.run(graph, timeout=300)
    images = [Image.open(io.BytesIO(png)) for png in server.images(entry)]
    assert images, f"the graph saved no image: {entry.get('status')}"
    return [(image.size, image.tobytes()) for image in images]


_fresh: dict[str, list] = {}


def fresh_image(server, headless, workflow: str) -> list:
    if workflow not in _fresh:
        _fresh[workflow] = pixels(server, on_fresh_model(cheap_graph(headless, workflow)))
    return _fresh[workflow]


# ComfyUI's own folders, the pack's link (its checkout is listed on its own) and this harness's server log.
COMFY_FOLDERS = {"output", "temp", "input", "user", "custom_nodes", "server.log"}


def snapshot(server) -> dict:
    """Every file of the pack's checkout and of the server's base folder outside ComfyUI's own folders."""
    files = {}
    for root, skip_top in ((Path(REPO_ROOT), {".git", ".venv", ".ruff_cache", ".pytest_cache"}),
                           (Path(server.base_dir), COMFY_FOLDERS)):
        for path in root.rglob("*"):
            relative = path.relative_to(root)
            if relative.parts[0] in skip_top or "__pycache__" in relative.parts or not path.is_file():
                continue
            stat = path.stat()
            files[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return files


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_fails_in_its_node_names_the_fix_and_leaves_the_server_as_fresh(comfy_server, headless, case,
                                                                                  bad_files):
    expected_image = fresh_image(comfy_server, headless, case.workflow)
    graph = cheap_graph(headless, case.workflow)
    case.edit(graph)
    before = snapshot(comfy_server)
    with pytest.raises(headless.PromptFailed) as failure:
        comfy_server.run(graph, timeout=300)
    message = failure.value.exception_message or ""
    assert failure.value.node_type == case.node, (failure.value.node_type, message)
    for fragment in case.says:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert snapshot(comfy_server) == before, "the bad prompt wrote files outside ComfyUI's folders"
    assert pixels(comfy_server, cheap_graph(headless, case.workflow)) == expected_image, \
        "after the bad prompt, the good workflow no longer gives the fresh-server image"


def test_the_table_covers_every_node_and_thirty_cases(comfy_server):
    ours = {name for name in comfy_server.object_info() if name.startswith("RefCustom_")}
    assert len(ours) == 10, sorted(ours)
    missing = ours - {case.node for case in CASES}
    assert not missing, f"no row fails in {sorted(missing)}"
    assert len(CASES) + len(TRAINER_CASES) >= 30, len(CASES) + len(TRAINER_CASES)


# ---- the trainer's command line ----

@dataclass(frozen=True)
class TrainerCase:
    name: str
    args: Callable[[Path], list[str]]
    says: tuple[str, ...]

    def __str__(self):
        return self.name


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def dataset(folder: Path, lines: list[dict]) -> Path:
    """A dataset folder: one 32x32 image and reference, and metadata.jsonl with `lines`."""
    from PIL import Image

    data = folder / "data"
    data.mkdir()
    Image.new("RGB", (32, 32), (200, 90, 40)).save(data / "a.png")
    (data / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return data


def dataset_config(folder: Path, lines: list[dict]) -> list[str]:
    data = dataset(folder, lines)
    return ["train", "--config", str(write_config(folder, f"mode: dreamo\noutput_dir: {folder / 'run'}\n"
                                                            f"data:\n  folder: {data}\n"
                                                            "dreamo:\n  routing_layers: [0, 1]\n"))]


def crafted_resume(folder: Path) -> list[str]:
    """A run folder whose last checkpoint holds an old-format optimizer.pt that is a crafted pickle."""
    import torch

    class Payload:
        def __reduce__(self):
            return (open, (str(folder / "pwned"), "w"))

    step = folder / "run" / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    torch.save({"state": Payload()}, step / "optimizer.pt")
    return dataset_config(folder, [{"image": "a.png", "references": ["a.png"], "prompt": "a toy [ref#1]"}])


TRAINER_CASES = [
    TrainerCase("unknown_config_key", lambda d: ["train", "--config", str(write_config(d, "mode: dreamo\nlearnig_rate: 1\n"))],
                ("unknown key(s) ['learnig_rate']", "valid keys")),
    TrainerCase("missing_config_file", lambda d: ["train", "--config", str(d / "nope.yaml")],
                ("nope.yaml does not exist", "print-config")),
    TrainerCase("bad_set_override", lambda d: ["train", "--config", str(write_config(d, "mode: dreamo\n")), "--set", "steps"],
                ("--set takes key.path=value",)),
    TrainerCase("dataset_without_metadata", lambda d: ["train", "--config", str(write_config(
        d, f"mode: dreamo\noutput_dir: {d / 'run'}\ndata:\n  folder: {d}\n"))], ("metadata.jsonl not found",)),
    TrainerCase("placeholder_without_its_reference", lambda d: dataset_config(
        d, [{"image": "a.png", "references": ["a.png"], "prompt": "a toy [ref#3]"}]),
        ("names [ref#3] but the line has 1 reference(s)", "add the reference or renumber the placeholder")),
    TrainerCase("ten_references", lambda d: dataset_config(
        d, [{"image": "a.png", "references": ["a.png"] * 10, "prompt": "a toy"}]), ("10 references",)),
    TrainerCase("crafted_pickle_in_the_run_folder", crafted_resume, ("holds pickle files ['optimizer.pt']", "unpickling can run arbitrary code", "Start a new run")),
]


@pytest.mark.parametrize("case", TRAINER_CASES, ids=str)
def test_trainer_cli_bad_input_is_a_clear_error(tmp_path, case):
    # The package is this checkout: a shim folder with `refcustom` pointing here goes on PYTHONPATH.
    shim = tmp_path / "pkg"
    shim.mkdir()
    (shim / "refcustom").symlink_to(REPO_ROOT)
    args = case.args(tmp_path)
    before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "pkg" not in p.parts}
    result = subprocess.run([sys.executable, "-m", "refcustom.train", *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(shim)}, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    for fragment in case.says:
        assert fragment in output, f"{fragment!r} not in {output!r}"
    assert not (tmp_path / "pwned").exists(), "a pickle in the run folder ran its code"
    after = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "pkg" not in p.parts}
    # Only the run folder's model may have been written (the tiny model is written before resume looks).
    assert {p for p in after - before if p.parts[0] != "run"} == set(), sorted(map(str, after - before))
