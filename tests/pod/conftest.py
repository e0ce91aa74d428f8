"""Shared fixtures: the digits data set, small scikit-learn models saved to disk, and
in-process pods."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from .harness import Pod, StartPod, pod_starter


@pytest.fixture(scope="session")
def digits() -> Any:
    return load_digits()


@pytest.fixture(scope="session")
def svc(digits: Any) -> SVC:
    """The seed's model: SVC(gamma=0.001) on the first half of the digits."""
    half = len(digits.data) // 2
    return SVC(gamma=0.001).fit(digits.data[:half], digits.target[:half])


@pytest.fixture(scope="session")
def svc_file(svc: SVC, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("svc") / "model.joblib"
    joblib.dump(svc, path)
    return path


@pytest.fixture(scope="session")
def digit_898(digits: Any) -> np.ndarray:
    """The seed's sample digit (label 8), as one float32 row."""
    return digits.data[898:899].astype(np.float32)


@pytest.fixture
async def start_pod() -> AsyncIterator[StartPod]:
    """``await start_pod(**settings)``: a pod in this process on a free port, with a
    fresh fake runtime ("fake") beside the built-in ones; stopped after the test."""
    async for start in pod_starter():
        yield start


@pytest.fixture
async def pod(start_pod: StartPod) -> Pod:
    return await start_pod()
