"""A model's folder in MLServer's models directory, as ModelMesh's MLServer adapter lays it out.

``<models dir>/<model id>/model-settings.json`` names the model after its concrete id
(MLServer serves it under that name) and points ``parameters.uri`` at the model's files,
linked into the folder:

- a model folder that holds its own ``model-settings.json`` (MLServer's native layout)
  keeps it, with ``name`` set to the model id and a relative ``uri`` made absolute; its
  other entries are linked;
- anything else (a file, or a folder without settings) gets generated settings: the
  implementation of its format when MLServer ships one (sklearn, xgboost, lightgbm,
  ModelMesh's table), else none, so that the runtime's ``MLSERVER_MODEL_IMPLEMENTATION``
  applies; ``uri`` is the linked file or folder.

Blocking (file system): call from a worker thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from gateway.core.errors import InvalidSpec, ModelFormatError

SETTINGS_FILE = "model-settings.json"

# MLServer's own runtimes by model format (ModelMesh's MLServer adapter's table).
IMPLEMENTATIONS = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
}

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def folder_of(models_dir: Path, model_id: str) -> Path:
    """``model_id``'s folder; InvalidSpec for an id that is no plain folder name."""
    if not _MODEL_ID.fullmatch(model_id) or model_id in (".", ".."):
        raise InvalidSpec(f"model id '{model_id}' cannot name a folder for MLServer")
    return models_dir / model_id


def write(models_dir: Path, model_id: str, model_type: str, model_path: Path) -> Path:
    """Lay out ``model_id`` (of format ``model_type``, files at ``model_path``) for MLServer;
    its folder. A folder left by an earlier load of the id is replaced."""
    folder = folder_of(models_dir, model_id)
    remove(models_dir, model_id)
    folder.mkdir(parents=True)
    source = model_path.resolve()
    native = source / SETTINGS_FILE
    if source.is_dir() and native.is_file():
        settings = _own_settings(native, model_id, source)
        for entry in source.iterdir():
            if entry.name != SETTINGS_FILE:
                (folder / entry.name).symlink_to(entry)
    else:
        link = folder / source.name
        link.symlink_to(source)
        settings = {"name": model_id, "parameters": {"uri": str(link)}}
        implementation = IMPLEMENTATIONS.get(model_type.split(":", 1)[0].lower())
        if implementation is not None:
            settings["implementation"] = implementation
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    return folder


def remove(models_dir: Path, model_id: str) -> None:
    """Delete ``model_id``'s folder (its links only: never the model's own files)."""
    folder = folder_of(models_dir, model_id)
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


def _own_settings(path: Path, model_id: str, source: Path) -> dict[str, Any]:
    try:
        settings = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path.name} of model '{model_id}' cannot be read: {exc}") from exc
    if not isinstance(settings, dict):
        raise ModelFormatError(f"{path.name} of model '{model_id}' is not a JSON object")
    settings["name"] = model_id
    parameters = settings.get("parameters")
    if isinstance(parameters, dict) and isinstance(uri := parameters.get("uri"), str):
        target = Path(os.path.normpath(source / uri))
        if not target.is_relative_to(source):  # a uri must stay inside the model's folder
            raise ModelFormatError(
                f"{path.name} of model '{model_id}': parameters.uri '{uri}' leaves its folder"
            )
        parameters["uri"] = str(target)
    return settings
