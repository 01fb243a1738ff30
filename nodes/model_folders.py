"""The pack's model folders: `models/<name>` registered for .safetensors files, `models/loras` searched too."""

from __future__ import annotations

import os

import folder_paths


def register_safetensors_folder(name: str) -> None:
    path = os.path.join(folder_paths.models_dir, name)
    folder_paths.add_model_folder_path(name, path, is_default=True)
    paths, extensions = folder_paths.folder_names_and_paths[name]
    folder_paths.folder_names_and_paths[name] = (paths, set(extensions) | {".safetensors"})


def file_options(folder: str) -> list[str]:
    """Files of models/<folder>, then those of models/loras not already listed."""
    names = list(folder_paths.get_filename_list(folder))
    return names + [n for n in folder_paths.get_filename_list("loras") if n not in names]


def resolve_file(name: str, folder: str, hint: str) -> str:
    for candidate in (folder, "loras"):
        path = folder_paths.get_full_path(candidate, name)
        if path is not None:
            return path
    raise FileNotFoundError(f"{name} is in neither models/{folder} nor models/loras. {hint}")
