"""Work big enough to block the pod's event loop runs in a worker thread.

The event loop answers health checks, metadata and every other model's requests;
a 20 MB batch predicted on it held them all for seconds, long enough for the
gateway to call the pod dead. Work of at least ``inline_below`` (values to
predict, bytes to parse) goes to asyncio's default executor; smaller work, the
online inference most requests are, stays inline, where handing it to a thread
would cost more than the work (tens of microseconds).

The libraries release the GIL in their numeric cores (scikit-learn's libsvm,
XGBoost, LightGBM, NumPy), so the loop keeps answering within a millisecond
while a batch runs (measured: an 81,920-row SVC predict, loop lag under 1 ms).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# A batch of this many input values or more is predicted in a worker thread
# (64 rows of 64 features; about 2 ms of SVC predict on this project's machine).
PREDICT_INLINE_VALUES = 4096
# A REST body of this many bytes or more is parsed in a worker thread.
DECODE_INLINE_BYTES = 1 << 20


async def sized(work: Callable[[], T], *, size: int, inline_below: int) -> T:
    """``work()``, inline when ``size`` is under ``inline_below``, else in a worker thread."""
    if size < inline_below:
        return work()
    return await asyncio.to_thread(work)
