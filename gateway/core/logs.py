"""Log lines of the gateway and the pods: plain text, or one JSON object per line
(MMGW_LOG_FORMAT=json) for log pipelines. A line about one request carries its
x-request-id in ``request_id`` (passed as ``extra``); the text form has it in the message.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID = "request_id"  # the LogRecord attribute (``extra``) a request's lines carry


def for_request(request_id: str) -> dict[str, str]:
    """``extra`` for a log call about one request."""
    return {REQUEST_ID: request_id}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and
    request_id and exception when there are."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, REQUEST_ID, None)
        if request_id is not None:
            entry[REQUEST_ID] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, form: LogFormat) -> None:
    """Send every logger's lines at ``level`` and above to stderr, in ``form``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
