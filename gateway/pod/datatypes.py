"""KServe V2 tensor datatypes and their numpy dtypes.

Numeric datatypes map to little-endian numpy dtypes (the byte order of V2 raw
contents); BYTES maps to numpy ``object`` arrays whose elements are ``bytes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from gateway.core.errors import InvalidInput

BYTES = "BYTES"

DTYPES: Mapping[str, np.dtype] = MappingProxyType(
    {
        "BOOL": np.dtype(np.bool_),
        "UINT8": np.dtype("<u1"),
        "UINT16": np.dtype("<u2"),
        "UINT32": np.dtype("<u4"),
        "UINT64": np.dtype("<u8"),
        "INT8": np.dtype("<i1"),
        "INT16": np.dtype("<i2"),
        "INT32": np.dtype("<i4"),
        "INT64": np.dtype("<i8"),
        "FP16": np.dtype("<f2"),
        "FP32": np.dtype("<f4"),
        "FP64": np.dtype("<f8"),
        BYTES: np.dtype(object),
    }
)

_BY_KIND_AND_SIZE: Mapping[tuple[str, int], str] = MappingProxyType(
    {(dtype.kind, dtype.itemsize): name for name, dtype in DTYPES.items() if name != BYTES}
)


def to_numpy(datatype: str) -> np.dtype:
    """The numpy dtype of a V2 datatype; InvalidInput if the name is unknown."""
    try:
        return DTYPES[datatype]
    except KeyError:
        raise InvalidInput(
            f"unknown datatype '{datatype}'; expected one of {', '.join(DTYPES)}"
        ) from None


def from_numpy(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype: strings, bytes and objects are BYTES."""
    if dtype.kind in "OSU":
        return BYTES
    try:
        return _BY_KIND_AND_SIZE[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no V2 datatype") from None
