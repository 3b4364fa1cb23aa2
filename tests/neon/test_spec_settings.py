"""The vendored Neon contract catches what it must, and bad settings fail with the variable's name."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from inkmcp.errors import InkError
from inkmcp.neon.settings import NeonSettings
from inkmcp.neon.spec import OPERATIONS, SPEC_FILE, NeonSpec, _refs, subset
from inkmcp.providers.database.neon import build_neon_provider

AUTH = "Bearer k"


def test_vendored_subset_is_self_contained_and_complete() -> None:
    spec = NeonSpec.load()
    doc = json.loads(SPEC_FILE.read_text())
    assert {(op.method.lower(), op.template) for op in spec.operations} == set(OPERATIONS)
    for ref in _refs(doc):  # every $ref resolves inside the subset
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    assert subset(doc) == {k: v for k, v in doc.items()}  # cutting the subset again changes nothing
    assert doc["servers"] == [{"url": "https://console.neon.tech/api/v2"}]


def test_requests_outside_the_contract_are_caught() -> None:
    spec = NeonSpec.load()
    ok = {"project": {"name": "inkmcp-x", "pg_version": 17, "branch": {"role_name": "a", "database_name": "a"}}}
    assert spec.request_problems("POST", "/projects", body=ok, authorization=AUTH) == []
    typo = {"project": {"name": "x", "branch": {"rolename": "a"}}}
    assert any("'rolename' was unexpected" in p
               for p in spec.request_problems("POST", "/projects", body=typo, authorization=AUTH))
    assert any("pg_version" in p for p in spec.request_problems(
        "POST", "/projects", body={"project": {"pg_version": 12}}, authorization=AUTH))
    assert any("Bearer" in p for p in spec.request_problems("GET", "/projects", authorization=None))
    assert any("database_name" in p for p in spec.request_problems(
        "GET", "/projects/abc-1/connection_uri", query={"role_name": "r"}, authorization=AUTH))
    assert any("does not match" in p for p in spec.request_problems(
        "GET", "/projects/Bad_Id", authorization=AUTH))
    assert spec.request_problems("PUT", "/projects", authorization=AUTH) == ["no operation PUT /projects in the spec"]


def test_responses_outside_the_contract_are_caught() -> None:
    spec = NeonSpec.load()
    assert spec.response_problems("GET", "/projects/abc", 423, {"code": "", "message": "locked"}) == []
    assert any("'code' is a required property" in p
               for p in spec.response_problems("GET", "/projects/abc", 500, {"message": "x"}))
    assert any("'uri' is a required property" in p
               for p in spec.response_problems("GET", "/projects/abc/connection_uri", 200, {}))
    assert any("not documented" in p for p in spec.response_problems("DELETE", "/projects/abc", 204, None))


@pytest.mark.parametrize(("env", "value", "variable"), [
    ("INKMCP_NEON_API_URL", "http://neon.example.com/api/v2", "INKMCP_NEON_API_URL"),
    ("INKMCP_NEON_API_URL", "https://user:pw@console.neon.tech/api/v2", "INKMCP_NEON_API_URL"),
    ("INKMCP_NEON_PG_VERSION", "12", "INKMCP_NEON_PG_VERSION"),
    ("INKMCP_NEON_REGION", "EU West!", "INKMCP_NEON_REGION"),
    ("INKMCP_NEON_API_KEY", "abc\ndef", "INKMCP_NEON_API_KEY"),
    ("INKMCP_NEON_PROJECT_PREFIX", "", "INKMCP_NEON_PROJECT_PREFIX"),
])
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: str, value: str,
                                        variable: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(InkError) as err:
        NeonSettings.from_env()
    assert err.value.argument == variable
    assert f"set {variable} to" in str(err.value)
    if "KEY" in env:
        assert value not in str(err.value)


async def test_missing_key_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INKMCP_NEON_API_KEY", "INKMCP_NEON_API_URL", "INKMCP_NEON_ORG_ID"):
        monkeypatch.delenv(name, raising=False)
    settings = NeonSettings.from_env()
    assert not settings.enabled and settings.api_url == "https://console.neon.tech/api/v2"
    with pytest.raises(InkError) as err:
        build_neon_provider(settings)
    assert err.value.argument == "INKMCP_NEON_API_KEY" and "API keys" in str(err.value)
    monkeypatch.setenv("INKMCP_NEON_API_KEY", "napi_secret_value")
    monkeypatch.setenv("INKMCP_NEON_API_URL", "http://127.0.0.1:9/api/v2/")
    settings = NeonSettings.from_env()
    assert settings.enabled and settings.api_url == "http://127.0.0.1:9/api/v2"
    assert "napi_secret_value" not in repr(settings) + str(settings.model_dump())
    provider = build_neon_provider(settings)
    assert provider.settings.api_key == SecretStr("napi_secret_value")
    await provider.close()


def test_standin_records_contract_breaks_and_refuses_bad_keys() -> None:
    """The stand-in is only worth its passing tests if it notices a client leaving the contract."""
    import httpx

    from inkmcp.neon.standin import NeonStandin

    with NeonStandin(api_keys={"good"}) as neon:
        with httpx.Client(base_url=neon.url) as http:
            assert http.get("/projects").status_code == 401
            assert http.get("/projects", headers={"Authorization": "Bearer bad"}).status_code == 401
            answer = http.post("/projects", headers={"Authorization": "Bearer good"},
                               json={"project": {"name": "x", "regionid": "aws-us-east-2"}})
            assert answer.status_code == 201  # Neon would ignore the typo; the stand-in records it
        assert any("'regionid' was unexpected" in v for v in neon.request_violations)
        assert any("Bearer" in v for v in neon.request_violations)
        assert neon.response_violations == []
