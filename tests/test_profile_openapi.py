"""``/openapi.json`` describes ``/api/v1/profile`` as it answers, and schemathesis
(``--checks all``) finds nothing on it: ``HEAD`` with any input (it samples nothing, so it
answers at once), and ``GET`` with bad input (400 as described). A good ``GET`` waits its
``seconds`` (up to 30) by design, longer than schemathesis' 5 s read timeout: the full run in
tests/test_openapi.py must leave ``get_api_v1_profile`` out as it leaves the endless event
stream out. A real answer's keys are the described ones."""

from __future__ import annotations

import json
from collections import Counter

import pytest_twisted
import treq
from twisted.internet import threads

from dashboard.web.openapi import openapi_document
from tests.test_openapi import Served, judge, schemathesis, served  # noqa: F401 (a fixture)


def test_the_profile_is_described() -> None:
    document = openapi_document(900)
    item = document["paths"]["/api/v1/profile"]
    assert set(item) == {"get", "head"}
    get = item["get"]
    params = {p["name"]: p for p in get["parameters"]}
    assert params["seconds"]["required"] is True
    assert params["seconds"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 30}
    assert params["format"]["schema"]["enum"] == ["json", "collapsed", "speedscope"]
    assert {"200", "400", "401", "409", "503"} <= set(get["responses"])
    content = get["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/plain"}
    schemas = document["components"]["schemas"]
    assert {"Profile", "Speedscope"} <= set(schemas)


@pytest_twisted.ensureDeferred
async def test_a_real_answer_has_the_described_fields(served: Served) -> None:  # noqa: F811
    response = await treq.get(served.base + "/api/v1/profile?seconds=1", persistent=False)
    assert response.code == 200
    answer = json.loads(await treq.content(response))
    schema = openapi_document(10)["components"]["schemas"]["Profile"]
    assert set(schema["required"]) <= set(answer)
    assert set(answer) == set(schema["properties"])
    for stack in answer["stacks"]:
        assert set(stack) == {"frames", "count"}
    assert set(answer["truncated"]) == set(schema["properties"]["truncated"]["properties"])


@pytest_twisted.ensureDeferred
async def test_schemathesis_finds_nothing_on_the_profile(served: Served) -> None:  # noqa: F811
    head = await threads.deferToThread(
        schemathesis, served.base, "--include-operation-id", "head_api_v1_profile"
    )
    bad_get = await threads.deferToThread(
        schemathesis,
        served.base,
        "--include-operation-id",
        "get_api_v1_profile",
        "--mode",
        "negative",
    )
    statuses: Counter[str] = Counter()
    for result in (head, bad_get):
        statuses += judge(result, served.site)
    codes = {key.rsplit(" ", 1)[1] for key in statuses if " /api/v1/profile " in key}
    assert {"200", "400"} <= codes, statuses
    assert not any(k.startswith("GET /api/v1/profile 200") for k in statuses), statuses
    assert served.monitor.profiler.runs_total == 0
    assert served.monitor.errors.as_json()["total"] == 0
