"""Schemathesis drives the live OpenAPI document against the app: no server errors, and every
answer (status, content type, headers, body) conforms to the document. Valid (positive) and
invalid (negative) inputs are generated for every operation.

(schemathesis' `from_fixture` does not work with pytest 9 yet, so each operation's strategy is
run through hypothesis here directly.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode

from imdb_api.app import Api

from .conftest import make_api

# A property-based sweep of the whole app (hundreds of generated requests, seconds per
# operation): the contract does not depend on the Python version, so it runs once.
pytestmark = pytest.mark.integration

# Invalid input must get a 4xx; 413 included, the documented answer to a batch over maxItems.
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 404, 405, 406, 413, 415, 422],
            }
        }
    }
)
OPERATIONS = [
    ("POST", "/predict"),
    ("POST", "/predict/batch"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/model/info"),
    ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def live_api(artifact: Path) -> Api:
    """The app with a small batch limit, so that generated batches can exceed it."""
    return make_api(artifact, max_batch=8, max_string_length=60)


# Operations without parameters or a body have no invalid input to generate.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if method == "POST" or mode is GenerationMode.POSITIVE
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_the_openapi_document_holds(
    live_api: Api, method: str, path: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", live_api, config=CONFIG)
    operation = schema[path][method]
    examples = {"/predict": 100, "/predict/batch": 50}.get(path, 5)

    @given(case=operation.as_strategy(generation_mode=mode) | st.nothing())
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate()

    check()


def test_every_route_is_exercised(live_api: Api) -> None:
    document = live_api.fastapi.openapi()
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert documented == set(OPERATIONS)
