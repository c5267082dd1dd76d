"""``/openapi.json``: the OpenAPI 3.0 description of the dashboard's HTTP endpoints.

Every operation, its parameters with their exact bounds (``seconds`` goes up to the history
length, so the document is built per monitor), and every answer it can give: the JSON errors
of the app (400, 404, 405, and 503 when too many history, series, snapshot or metrics
answers are in flight) and of the guard in front of it (401, 414, 421, 431). Only ``GET`` and
``HEAD`` are described: the guard's own ``session`` and ``POST session/sign-out`` (the page's
sign-in state, README "Access") are not part of the app and not in this document. Paths
are relative to wherever the dashboard is mounted, and so is the one server (``.``: the
folder this document was fetched from).

Fields of the snapshot are described in docs/snapshot.md; here each section is an object
(``null`` when its probe failed) with its main fields typed. ``/api/v1/series`` answers the
same sections cut down to the figures the page charts (dashboard/web/series.py).
"""

from __future__ import annotations

import copy
from typing import Any

from dashboard.web.profile import MAX_SECONDS as PROFILE_MAX_SECONDS
from dashboard.web.profile import OPENAPI_SCHEMAS as PROFILE_SCHEMAS
from dashboard.web.series import SITES_MAX_S

JSONDict = dict[str, Any]

TITLE = "Reactor Dashboard"
API_VERSION = "1"

_ERROR: JSONDict = {
    "type": "object",
    "required": ["error", "message", "status"],
    "properties": {
        "error": {"type": "string", "description": "a stable code, e.g. bad_request"},
        "message": {"type": "string", "description": "what is wrong, for people"},
        "status": {"type": "integer"},
        "parameter": {"type": "string", "nullable": True},
    },
}


def _object(properties: dict[str, str], nullable: bool = True) -> JSONDict:
    """An object whose listed fields have these JSON types (more fields may come)."""
    props: JSONDict = {}
    for name, kind in properties.items():
        optional = kind.endswith("?")
        props[name] = {"type": kind.rstrip("?")}
        if optional:
            props[name]["nullable"] = True
    return {"type": "object", "nullable": nullable, "properties": props}


_BLOCK = _object(
    {
        "at": "number",
        "duration_ms": "number",
        "stack": "array",
        "where": "string?",
        "owner": "string",
    },
    nullable=False,
)
_BLOCK["properties"]["owner"]["enum"] = ["program", "dashboard", "unknown"]
_BLOCK["properties"]["stack"]["items"] = {"type": "string"}

_LOOP = _object(
    {
        "lag_ms": "object",
        "busy_ratio": "number?",
        "iterations_total": "integer",
        "blocks_total": "integer",
        "blocks": "array",
        "threshold_ms": "number",
        "window_s": "number",
        "max_lateness_ms": "number",
        "wait_hook": "string?",
        "watchdog": "boolean",
        "hot_path": "string",
        "hot_path_reason": "string?",
        "stuck": "object?",
        "handlers": "array?",
        "handlers_other": "object?",
        "handlers_window_s": "number?",
        "handlers_off_reason": "string?",
    }
)
_LOOP["properties"]["blocks"]["items"] = _BLOCK
# busy time by handler (null while off; handlers_off_reason says why)
_LOOP["properties"]["handlers"]["items"] = _object(
    {
        "handler": "string",
        "own": "boolean",
        "calls": "integer",
        "busy_s": "number",
        "share": "number?",
        "share_last": "number?",
        "calls_per_s": "number?",
        "mean_ms": "number",
        "max_ms": "number",
        "calls_total": "integer",
        "busy_s_total": "number",
        "max_ms_total": "number",
        "duration_counts": "array",
    },
    nullable=False,
)
# null but in answers given while the loop is stuck (dashboard/web/stuck_server.py)
_LOOP["properties"]["stuck"] = _object(
    {"since": "number", "for_s": "number", "stack": "array", "where": "string?", "owner": "string"}
)
_LOOP["properties"]["stuck"]["properties"]["stack"]["items"] = {"type": "string"}
_LOOP["properties"]["lag_ms"] = _object(
    {"last": "number?", "p50": "number?", "p99": "number?", "max": "number?", "samples": "integer"},
    nullable=False,
)

_DEFERREDS = _object(
    {
        "pending": "integer",
        "created_total": "integer",
        "fired_total": "integer",
        "unfired_collected_total": "integer",
        "born_fired_total": "integer",
        "hot_path": "string",
        "hot_path_reason": "string?",
        "oldest_pending_age_s": "number",
        "sites_total": "integer",
        "sites": "array",
        "oldest": "array",
        "own": "object",
        "lost_sites": "array",
        "loops": "object",
    }
)
_DEFERREDS["properties"]["own"] = _object(
    {
        "pending": "integer",
        "created_total": "integer",
        "fired_total": "integer",
        "unfired_collected_total": "integer",
    },
    nullable=False,
)
_DEFERREDS["properties"]["lost_sites"]["items"] = _object(
    {
        "site": "string",
        "unfired_collected_total": "integer",
        "lost_last_60s": "integer",
        "last_lost_age_s": "number?",
        "pending": "integer",
    },
    nullable=False,
)
_DEFERREDS["properties"]["loops"] = _object({"pending": "integer", "items": "array"}, False)
_DEFERREDS["properties"]["loops"]["properties"]["items"]["items"] = _object(
    {"function": "string", "pending": "integer", "oldest_age_s": "number?"}, nullable=False
)
_CONNECTIONS = _object(
    {
        "open": "integer",
        "opened_total": "integer",
        "closed_total": "integer",
        "failed_connects_total": "integer",
        "by_kind": "object",
        "listening": "array",
        "slow_consumers": "integer",
        "items": "array",
        "items_total": "integer",
        "items_truncated": "boolean",
        "hot_path": "string",
        "hot_path_reason": "string?",
        "tcp_counts": "string",
        "own": "object",
    }
)
_CONNECTIONS["properties"]["own"] = _object({"open": "integer", "listening": "array"}, False)
_CONNECTIONS["properties"]["own"]["properties"]["listening"]["items"] = {"type": "string"}
_POOL = _object(
    {
        "name": "string",
        "kind": "string",
        "max": "integer?",
        "in_use": "integer?",
        "reactor": "boolean",
        "max_per_host": "integer?",
        "hosts": "array",
        "driver": "string?",
        "database": "string?",
    },
    nullable=False,
)
_POOL["properties"]["hosts"]["items"] = _object(
    {"host": "string", "in_use": "integer?", "idle": "integer?", "max": "integer?"},
    nullable=False,
)
_TIMEOUTS = _object(
    {
        "delayed_calls": "integer",
        "overdue_calls": "integer",
        "fired_total": "object",
        "cancelled_total": "integer",
        "recent": "array",
        "by_function": "array",
        "own_calls": "integer",
    }
)
_PROCESS = _object(
    {
        "pid": "integer",
        "uptime_s": "number",
        "rss_bytes": "integer?",
        "cpu_percent": "number",
        "open_fds": "integer?",
        "threads": "integer",
    }
)
_SSE = _object(
    {
        "clients": "integer",
        "max_clients": "integer",
        "connected_total": "integer",
        "rejected_total": "integer",
        "dropped_slow_total": "integer",
    }
)
_ERRORS = _object(
    {"total": "integer", "by_probe": "object", "last": "object", "disabled": "array"},
    nullable=False,
)
_ERRORS["properties"]["by_probe"]["additionalProperties"] = {"type": "integer"}
_ERRORS["properties"]["last"]["additionalProperties"] = {"type": "string"}
_ERRORS["properties"]["disabled"]["items"] = {"type": "string"}

_SNAPSHOT: JSONDict = {
    "type": "object",
    "description": "One sample of every probe (docs/snapshot.md)",
    "required": [
        "seq",
        "time",
        "reactor",
        "interval_s",
        "loop",
        "deferreds",
        "connections",
        "pools",
        "timeouts",
        "process",
        "errors",
    ],
    "properties": {
        "seq": {"type": "integer", "minimum": 0},
        "time": {"type": "number", "description": "unix seconds"},
        "reactor": {"type": "string"},
        "interval_s": {"type": "number"},
        "loop": _LOOP,
        "deferreds": _DEFERREDS,
        "connections": _CONNECTIONS,
        "pools": {"type": "array", "nullable": True, "items": _POOL},
        "timeouts": _TIMEOUTS,
        "process": _PROCESS,
        "sse": _SSE,
        "errors": _ERRORS,
    },
}


# /api/v1/series: each sample's charted figures, in the snapshot's shape (series.py).
_SERIES_LOOP = _object({"lag_ms": "object", "busy_ratio": "number?"})
_SERIES_LOOP["properties"]["lag_ms"] = _object(
    {"p50": "number?", "p99": "number?", "last": "number?"}, nullable=False
)
_SERIES_TIMEOUTS = _object({"fired_total": "object"})
_SERIES_TIMEOUTS["properties"]["fired_total"]["additionalProperties"] = {"type": "integer"}
_SERIES_DEFERREDS = _object({"pending": "integer", "sites": "array"})
_SERIES_DEFERREDS["properties"]["sites"]["items"] = _object(
    {"site": "string", "pending": "integer"}, nullable=False
)
_SERIES_DEFERREDS["properties"]["sites"]["description"] = (
    "only on the samples of the last sites_seconds"
)
_SERIES_SAMPLE: JSONDict = {
    "type": "object",
    "description": "The figures of one sample that the page charts and judges, nested as in"
    " the snapshot; a section is null when its probe failed",
    "required": ["seq", "time", "loop", "connections", "timeouts", "pools", "deferreds"],
    "properties": {
        "seq": {"type": "integer", "minimum": 0},
        "time": {"type": "number", "description": "unix seconds"},
        "loop": _SERIES_LOOP,
        "connections": _object({"open": "integer"}),
        "timeouts": _SERIES_TIMEOUTS,
        "pools": {
            "type": "array",
            "nullable": True,
            "items": _object({"name": "string", "in_use": "integer?"}, nullable=False),
        },
        "deferreds": _SERIES_DEFERREDS,
    },
}


def _json(schema_ref: str, description: str) -> JSONDict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": schema_ref}}},
    }


def _error(description: str, **headers: JSONDict) -> JSONDict:
    answer = _json("#/components/schemas/Error", description)
    if headers:
        answer["headers"] = headers
    return answer


_TEXT_HEADER: JSONDict = {"required": True, "schema": {"type": "string"}}

#: Answers every operation may give: the guard's refusals and the app's own errors.
_COMMON: JSONDict = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "405": {"$ref": "#/components/responses/MethodNotAllowed"},
    "414": {"$ref": "#/components/responses/UriTooLong"},
    "421": {"$ref": "#/components/responses/HostNotAllowed"},
    "431": {"$ref": "#/components/responses/HeadersTooLarge"},
}


def _bad_request() -> JSONDict:
    return {"$ref": "#/components/responses/BadRequest"}


def _operation(summary: str, responses: JSONDict, parameters: list[JSONDict]) -> JSONDict:
    return {
        "summary": summary,
        "parameters": parameters,
        "responses": {**responses, "400": _bad_request(), **_COMMON},
    }


def _with_head(path_item: JSONDict, operation_id: str) -> JSONDict:
    """``get`` as given, and ``head``: the same parameters and answers, without bodies."""
    get = path_item["get"]
    get["operationId"] = f"get_{operation_id}"
    head = copy.deepcopy(get)
    head["operationId"] = f"head_{operation_id}"
    head["summary"] = "Headers only: " + get["summary"][0].lower() + get["summary"][1:]
    for answer in head["responses"].values():
        answer.pop("content", None)
    return {"get": get, "head": head}


def _seconds(history_seconds: int) -> JSONDict:
    """The ``seconds`` query parameter of the history and the series."""
    return {
        "name": "seconds",
        "in": "query",
        "required": False,
        "description": f"how far back (default and most: {history_seconds})",
        "schema": {"type": "integer", "minimum": 1, "maximum": history_seconds},
    }


def openapi_document(history_seconds: int) -> JSONDict:
    """The document for a dashboard whose history covers ``history_seconds`` (>= 1)."""
    if history_seconds < 1:
        raise ValueError(f"history_seconds must be >= 1, got {history_seconds!r}")
    paths: JSONDict = {
        "/api/v1/snapshot": {
            "get": _operation(
                "The newest sample; fresh=1 collects one now (not stored in the history),"
                " at most one per fresh_min_interval_s: callers in between wait for it",
                {
                    "200": _json("#/components/schemas/Snapshot", "the sample"),
                    "503": _error(
                        "too many snapshot and metrics answers in flight; try again after"
                        " Retry-After seconds",
                        **{"Retry-After": _TEXT_HEADER},
                    ),
                },
                [
                    {
                        "name": "fresh",
                        "in": "query",
                        "required": False,
                        "description": "1 or true: collect a snapshot now",
                        "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                    }
                ],
            )
        },
        "/api/v1/history": {
            "get": _operation(
                "The samples of the last N seconds, oldest first",
                {
                    "200": _json("#/components/schemas/History", "the samples"),
                    "503": _error(
                        "too many history answers in flight; try again after Retry-After seconds",
                        **{"Retry-After": _TEXT_HEADER},
                    ),
                },
                [_seconds(history_seconds)],
            )
        },
        "/api/v1/series": {
            "get": _operation(
                "The charted figures of the samples of the last N seconds, oldest first:"
                " the light history the page seeds its charts from",
                {
                    "200": _json("#/components/schemas/Series", "the samples' figures"),
                    "503": _error(
                        "too many series answers in flight; try again after Retry-After seconds",
                        **{"Retry-After": _TEXT_HEADER},
                    ),
                },
                [
                    _seconds(history_seconds),
                    {
                        "name": "sites_seconds",
                        "in": "query",
                        "required": False,
                        "description": "the samples of the last this many seconds also carry"
                        " deferreds.sites as {site, pending} (default 0: none)",
                        "schema": {"type": "integer", "minimum": 0, "maximum": SITES_MAX_S},
                    },
                ],
            )
        },
        "/api/v1/profile": {
            "get": _operation(
                "A profile of the reactor thread: its stack sampled about 100 times a second"
                " for N seconds, merged by function; answered after N seconds. HEAD samples"
                " nothing: 200 when a profile could start now",
                {
                    "200": {
                        "description": "the profile (format=collapsed: flamegraph.pl's folded"
                        " stacks; format=speedscope: a speedscope file), the downloads with"
                        " Content-Disposition",
                        "headers": {
                            "Content-Disposition": {"required": False, "schema": {"type": "string"}}
                        },
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Profile"},
                                        {"$ref": "#/components/schemas/Speedscope"},
                                    ]
                                }
                            },
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    "409": _error("another profile is running (seconds_left says for how long)"),
                    "503": _error("the monitor is stopped, or stopped before the profile ended"),
                },
                [
                    {
                        "name": "seconds",
                        "in": "query",
                        "required": True,
                        "description": "how long to sample",
                        "schema": {"type": "integer", "minimum": 1, "maximum": PROFILE_MAX_SECONDS},
                    },
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "description": "json (default), collapsed or speedscope",
                        "schema": {"type": "string", "enum": ["json", "collapsed", "speedscope"]},
                    },
                ],
            )
        },
        "/api/v1/events": {
            "get": _operation(
                "Server-sent events: one `event: snapshot` (with `id: <seq>`) per sample",
                {
                    "200": {
                        "description": "the stream (never ends on its own)",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "503": _error(
                        "too many streams open, or the monitor is stopped",
                        **{"Retry-After": _TEXT_HEADER},
                    ),
                },
                [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "resume after this seq (browsers send it on"
                        " reconnect); empty means none",
                        "schema": {"type": "string", "pattern": "^[0-9]{0,18}$"},
                    }
                ],
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus text exposition of the newest sample (docs/metrics.md)",
                {
                    "200": {
                        "description": "the metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": _error(
                        "too many snapshot and metrics answers in flight; try again after"
                        " Retry-After seconds",
                        **{"Retry-After": _TEXT_HEADER},
                    ),
                },
                [],
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document",
                {
                    "200": {
                        "description": "OpenAPI 3.0",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
                [],
            )
        },
        "/": {
            "get": _operation(
                "The HTML dashboard (it updates itself over /api/v1/events)",
                {
                    "200": {
                        "description": "the page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "303": {
                        "description": "?token= was right: the same page without it, and a"
                        " session cookie",
                        "headers": {"Location": _TEXT_HEADER, "Set-Cookie": _TEXT_HEADER},
                    },
                },
                [
                    {
                        "name": "token",
                        "in": "query",
                        "required": False,
                        "description": "when a token is set: sign in once (a cookie follows)",
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
    }
    # Every path answers HEAD as it answers GET, without the body.
    for path, item in paths.items():
        name = path.strip("/").replace("/", "_").replace(".", "_") or "page"
        paths[path] = _with_head(item, name)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": TITLE,
            "version": API_VERSION,
            "description": "Live health of a Twisted reactor: pending Deferreds, connections,"
            " pools, timeouts and loop lag. Read-only: only GET and HEAD are answered.",
        },
        "servers": [{"url": ".", "description": "where this document was fetched from"}],
        "paths": paths,
        "security": [{}, {"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "when the dashboard has a token; the page also takes"
                    " ?token= once and then a cookie",
                }
            },
            "schemas": {
                "Error": _ERROR,
                **PROFILE_SCHEMAS,
                "Snapshot": _SNAPSHOT,
                "Series": {
                    "type": "object",
                    "required": ["seconds", "sites_seconds", "samples"],
                    "properties": {
                        "seconds": {"type": "integer"},
                        "sites_seconds": {"type": "integer"},
                        "samples": {"type": "array", "items": _SERIES_SAMPLE},
                    },
                },
                "History": {
                    "type": "object",
                    "required": ["seconds", "samples"],
                    "properties": {
                        "seconds": {"type": "integer"},
                        "samples": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Snapshot"},
                        },
                    },
                },
            },
            "responses": {
                "BadRequest": _error("a parameter is wrong (named in `parameter`)"),
                "Unauthorized": _error(
                    "a token is set and none (or a wrong one) came",
                    **{"WWW-Authenticate": _TEXT_HEADER},
                ),
                "MethodNotAllowed": _error(
                    "only GET and HEAD are answered", **{"Allow": _TEXT_HEADER}
                ),
                "UriTooLong": _error("the request target is over 4 KiB"),
                "HostNotAllowed": _error("the Host header names another site (DNS rebinding)"),
                "HeadersTooLarge": _error("too many header lines, or one over 8 KiB"),
            },
        },
    }
