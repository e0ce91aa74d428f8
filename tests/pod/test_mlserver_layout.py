"""A model's folder for MLServer: generated settings, or the model's own with its name set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.core.errors import InvalidSpec, ModelFormatError
from gateway.pod.mlserver import layout


def settings_of(folder: Path) -> dict[str, object]:
    return dict(json.loads((folder / layout.SETTINGS_FILE).read_text()))


def test_a_file_gets_generated_settings_with_mlservers_own_runtime(tmp_path: Path) -> None:
    model = tmp_path / "pvc" / "mnist-svm.joblib"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    folder = layout.write(tmp_path / "models", "mnist__isvc-1", "sklearn", model)
    link = folder / "mnist-svm.joblib"
    assert link.is_symlink() and link.resolve() == model
    assert settings_of(folder) == {
        "name": "mnist__isvc-1",
        "parameters": {"uri": str(link)},
        "implementation": "mlserver_sklearn.SKLearnModel",
    }


def test_a_format_mlserver_does_not_ship_leaves_the_runtimes_class(tmp_path: Path) -> None:
    model = tmp_path / "digits.joblib"
    model.write_bytes(b"weights")
    folder = layout.write(tmp_path / "models", "digits__isvc-1", "digits", model)
    assert "implementation" not in settings_of(folder)  # MLSERVER_MODEL_IMPLEMENTATION applies


def test_a_folder_with_its_own_settings_keeps_them_under_the_model_id(tmp_path: Path) -> None:
    source = tmp_path / "pvc" / "digits"
    source.mkdir(parents=True)
    (source / "model.joblib").write_bytes(b"weights")
    own = {"name": "digits", "implementation": "x.Y", "parameters": {"uri": "./model.joblib"}}
    (source / layout.SETTINGS_FILE).write_text(json.dumps(own))
    folder = layout.write(tmp_path / "models", "digits__isvc-2", "digits", source)
    assert settings_of(folder) == {
        "name": "digits__isvc-2",
        "implementation": "x.Y",
        "parameters": {"uri": str(source / "model.joblib")},
    }
    assert (folder / "model.joblib").resolve() == source / "model.joblib"
    layout.remove(tmp_path / "models", "digits__isvc-2")
    assert not folder.exists() and (source / "model.joblib").read_bytes() == b"weights"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"parameters": {"uri": "../../secrets"}}', "leaves its folder"),
        ("not json", "cannot be read"),
        ("[1, 2]", "is not a JSON object"),
    ],
)
def test_settings_that_cannot_be_used_fail_the_load(
    tmp_path: Path, content: str, message: str
) -> None:
    source = tmp_path / "m"
    source.mkdir()
    (source / layout.SETTINGS_FILE).write_text(content)
    with pytest.raises(ModelFormatError, match=message):
        layout.write(tmp_path / "models", "m__isvc-1", "digits", source)


@pytest.mark.parametrize("model_id", ["../escape", "a/b", "", ".."])
def test_a_model_id_that_is_no_folder_name_is_refused(tmp_path: Path, model_id: str) -> None:
    with pytest.raises(InvalidSpec):
        layout.write(tmp_path / "models", model_id, "digits", tmp_path)
