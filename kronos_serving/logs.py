"""JSON logs, one object per line, for the service's own records and BentoML's (access log too).

Records carry only counts, lengths, time ranges and identifiers: never OHLCV values.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re

STANDARD_ATTRS = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "trace_msg", "levelname_bracketed", "component", "service_name"}
ACCESS_REQUEST = re.compile(r"method=(?P<method>[^,]*),path=(?P<path>[^,)]*)")
ACCESS_STATUS = re.compile(r"status=(?P<status>\d+)")


def current_trace_ids() -> tuple[str | None, str | None]:
    """Trace and span id (hex) of the request being served, if any."""
    try:
        from bentoml._internal.context import trace_context

        trace_id, span_id = trace_context.trace_id, trace_context.span_id
    except Exception:  # outside a BentoML server
        trace_id = span_id = None
    if not trace_id:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        trace_id, span_id = context.trace_id, context.span_id
    if not trace_id:
        return None, None
    return format(trace_id, "032x"), format(span_id, "016x")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with its ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "bentoml.access" and isinstance(record.args, tuple) and len(record.args) == 4:
            request, response, latency = record.args[1], record.args[2], record.args[3]
            entry["event"] = "access"
            if match := ACCESS_REQUEST.search(str(request)):
                entry.update(method=match["method"], path=match["path"])
            if match := ACCESS_STATUS.search(str(response)):
                entry["result_status"] = int(match["status"])
            entry["latency_ms"] = round(float(latency), 3)
        for key, value in vars(record).items():
            if key not in STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if "trace_id" not in entry:
            entry["trace_id"], entry["span_id"] = current_trace_ids()
        if record.exc_info:
            entry["stack"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def client_errors_without_stacks(record: logging.LogRecord) -> bool:
    """BentoML logs every request that fails schema validation as an error with a stack: it is
    a client error (answered 400, and logged by our request log), so keep one warning line."""
    error = record.exc_info[1] if record.exc_info else None
    if type(error).__name__ == "ValidationError" and type(error).__module__.startswith("pydantic"):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = "request failed schema validation: %s", (
            f"{error.error_count()} error(s)",)
        record.exc_info = record.exc_text = None
    return True


def configure_json_logging(level: str = "INFO") -> None:
    """Give every configured handler the JSON formatter; set the ``kronos`` loggers' level."""
    formatter = JsonFormatter()
    loggers = [logging.getLogger()] + [logging.getLogger(name)
                                      for name in list(logging.root.manager.loggerDict)]
    handled = False
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            handler.setFormatter(formatter)
            # BentoML's filter overwrites record.request_id with its own id; we log ours.
            handler.filters = [f for f in handler.filters if type(f).__name__ != "TraceRecordFilter"]
            if client_errors_without_stacks not in handler.filters:
                handler.addFilter(client_errors_without_stacks)
            handled = True
    if not handled:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        logging.getLogger().addHandler(handler)
    logging.getLogger("kronos").setLevel(level.upper())
