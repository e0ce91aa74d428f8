"""The sample model of the seed documents: an SVC on scikit-learn's digits.

``SVC(gamma=0.001)`` trained on the first half of ``load_digits()``; row 898
of the data set is the seed curl's digit, an 8, and the model predicts 8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_FILE = "mnist-svm.joblib"
SAMPLE_ROW = 898  # the digit in the seed's curl


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data, data.target


def sample_input() -> list[float]:
    """The 64 pixel values of the seed's curl."""
    features, _ = digits()
    return [float(v) for v in features[SAMPLE_ROW]]


def sample_request(*, oip: bool = False) -> dict[str, Any]:
    """The seed curl's request for the sample digit: protobuf JSON (``contents``), or with
    ``oip`` the Open Inference Protocol's form of the KServe docs (``data``)."""
    pixels = sample_input()
    tensor: dict[str, Any] = {"name": "predict", "shape": [1, 64], "datatype": "FP32"}
    tensor.update({"data": pixels} if oip else {"contents": {"fp32_contents": pixels}})
    return {"inputs": [tensor]}


def train_mnist_svm(path: Path) -> Path:
    """Train the sample model and save it with joblib at ``path`` (unless it is there)."""
    if path.exists():
        return path
    import joblib
    from sklearn.svm import SVC

    features, labels = digits()
    half = len(features) // 2
    model = SVC(gamma=0.001).fit(features[:half], labels[:half])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    joblib.dump(model, tmp)
    tmp.replace(path)
    return path
