"""Property-based tests of the whole API from its own OpenAPI document (schemathesis, on a real
`ggnet serve` with a private tgtd): whatever input the schema allows, no 5xx, and every response
has a documented status, content type and shape.

Bounded for CI: a fixed number of examples per operation (``EXAMPLES``) and a time budget per
operation (Hypothesis stops generating when the budget is spent: ``BUDGET_SECONDS``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks

from tests.e2e import tgtd as tgtd_module
from tests.e2e.api_server import ApiServer, start_api

pytestmark = pytest.mark.e2e

EXAMPLES = 12
BUDGET_SECONDS = 20.0
# logging out would end the very login the run uses
SKIPPED = {"POST /auth/logout"}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    why = tgtd_module.unavailable()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("api-schema")
    daemon = tgtd_module.start_private_tgtd(tmp)
    try:
        server = start_api(tmp, daemon)
        try:
            yield server
        finally:
            server.close()
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def admin_token(api_server: ApiServer) -> str:
    return api_server.login("admin")


@pytest.fixture(scope="module")
def api_schema(api_server: ApiServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api_server.url}/api/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
_started: dict[str, float] = {}
_calls: dict[str, int] = {}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: schemathesis.Case, admin_token: str, api_server: ApiServer) -> None:
    key = f"{case.method.upper()} {case.path}"
    if key in SKIPPED:
        return
    started = _started.setdefault(key, time.monotonic())
    if time.monotonic() - started > BUDGET_SECONDS:
        return  # this operation's budget is spent (the run stays bounded on a slow machine)
    _calls[key] = _calls.get(key, 0) + 1
    case.call_and_validate(
        base_url=f"{api_server.url}/api/v1",
        headers={"Authorization": f"Bearer {admin_token}"},
        checks=CHECKS,
        timeout=60,
    )


def test_no_secret_reached_the_log_during_the_run(api_server: ApiServer) -> None:
    """After the property-based run (pytest runs this module's tests in order)."""
    assert Path(api_server.serve.log_path).exists()
    if _calls:  # the whole module ran: every operation was exercised, most many times
        assert sum(_calls.values()) > 5 * len(_calls), _calls
    api_server.assert_no_secrets_logged()
