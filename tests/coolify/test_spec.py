"""The packaged Coolify contract: it is Coolify's own file, it has the operations the design record relies on,
and validation catches what real Coolify would refuse."""

from __future__ import annotations

import hashlib

import pytest

from inkmcp.coolify import models
from inkmcp.coolify.spec import DEVIATIONS, SPEC_FILE, SPEC_SHA256, CoolifySpec, SpecError

# runbooks/gvisor-decision.md §4.5 and review findings 7/9 cite these; they must exist in 4.3.11's spec.
RECORD_OPERATIONS = {
    ("GET", "/servers"): "list-servers",
    ("POST", "/servers"): "create-server",
    ("GET", "/servers/{uuid}"): "get-server-by-uuid",
    ("PATCH", "/servers/{uuid}"): "update-server-by-uuid",
    ("DELETE", "/servers/{uuid}"): "delete-server-by-uuid",
    ("POST", "/servers/{uuid}/validate"): "validate-server-by-uuid",
    ("GET", "/servers/{uuid}/sentinel"): "get-server-sentinel",
    ("PATCH", "/servers/{uuid}/sentinel"): "update-server-sentinel",
    ("GET", "/servers/{uuid}/proxy"): "get-server-proxy",
    ("PUT", "/servers/{uuid}/proxy/configuration"): "save-server-proxy-configuration",
    ("POST", "/servers/{uuid}/proxy/restart"): "restart-server-proxy",
}


def test_packaged_spec_is_coolifys_file_byte_for_byte() -> None:
    assert hashlib.sha256(SPEC_FILE.read_bytes()).hexdigest() == SPEC_SHA256


@pytest.mark.parametrize(("method", "template"), sorted(RECORD_OPERATIONS))
def test_operations_the_record_cites_exist(spec: CoolifySpec, method: str, template: str) -> None:
    op, params = spec.operation(method, template.replace("{uuid}", "u1"))
    assert op.operation_id == RECORD_OPERATIONS[(method, template)]
    assert op.template == template and params == ({"uuid": "u1"} if "{uuid}" in template else {})
    assert op.bearer


def test_sentinel_and_proxy_bodies_are_what_registration_sends(spec: CoolifySpec) -> None:
    sentinel = spec.by_id("update-server-sentinel")
    assert {"is_sentinel_enabled", "is_metrics_enabled"} <= sentinel.body_keys
    proxy = spec.by_id("save-server-proxy-configuration")
    assert proxy.body_keys == {"configuration"} and proxy.request_schema is not None
    assert proxy.request_schema["required"] == ["configuration"]
    create = spec.by_id("create-server")
    assert {"instant_validate", "proxy_type", "is_build_server"} <= create.body_keys


@pytest.mark.parametrize(("model", "operation"), [
    (models.ServerCreate, "create-server"),
    (models.ServerUpdate, "update-server-by-uuid"),
    (models.SentinelUpdate, "update-server-sentinel"),
    (models.ProxyConfiguration, "save-server-proxy-configuration"),
    (models.ValidateServer, "validate-server-by-uuid"),
])
def test_request_models_send_only_spec_fields(spec: CoolifySpec, model: type, operation: str) -> None:
    """A field the spec lacks would be a 422 from real Coolify on every call."""
    extra = set(model.model_fields) - spec.by_id(operation).body_keys  # type: ignore[attr-defined]
    assert not extra, f"{model.__name__} has fields {extra} that {operation} does not accept"


def test_unknown_key_wrong_type_and_missing_body_are_problems(spec: CoolifySpec) -> None:
    auth = "Bearer 1|x"
    problems = spec.request_problems("POST", "/api/v1/servers", authorization=auth,
                                     body={"ip": "10.0.2.21", "private_key_uuid": "k", "port": "22",
                                           "wildcard_domain": "x"})
    assert any("port" in p and "integer" in p for p in problems)
    assert any("'wildcard_domain'" in p and "422" in p for p in problems)
    assert spec.request_problems("PUT", "/servers/u/proxy/configuration", authorization=auth,
                                 body={}) == ["body (root): 'configuration' is a required property"]
    assert spec.request_problems("PATCH", "/servers/u/sentinel", authorization=auth) == [
        "update-server-sentinel requires a JSON body"]
    assert "no 'Authorization: Bearer" in spec.request_problems("GET", "/servers")[0]
    assert spec.request_problems("GET", "/servers/u/sentinel/extra", authorization=auth)[0].startswith(
        "no operation")
    with pytest.raises(SpecError, match="does not match Coolify's OpenAPI spec"):
        spec.check_request("POST", "/servers", body={"ip": 1}, authorization=auth)


def test_responses_outside_the_contract_are_problems(spec: CoolifySpec) -> None:
    assert spec.response_problems("GET", "/servers", 200, [{"uuid": "a", "ip": "10.0.2.21", "port": "22"}])
    assert spec.response_problems("GET", "/servers", 502, {"message": "x"})[0].startswith("status 502 is neither")
    assert spec.response_problems("GET", "/servers", 429, {"message": "Too Many Attempts."}, {}) == [
        "429 without a Retry-After header (Laravel's throttle always sends one)"]
    # NOTES.md §a answers every route can give, although the operation does not document them
    assert spec.response_problems("PATCH", "/servers/u/sentinel", 403,
                                  {"message": "Missing required permissions: write"}) == []
    assert spec.response_problems("GET", "/servers", 429, {"message": "Too Many Attempts."},
                                  {"Retry-After": "1"}) == []


def test_deviations_are_applied_and_sourced(spec: CoolifySpec) -> None:
    """Nulls Coolify really returns where the spec says string: allowed only where a deviation says why."""
    assert DEVIATIONS and all(d.source for d in DEVIATIONS)
    item = {"uuid": "a", "ip": "10.0.2.21", "description": None, "validation_logs": None,
            "settings": {"wildcard_domain": None}}
    assert spec.response_problems("GET", "/servers/a", 200, item) == []
    assert spec.response_problems("GET", "/servers/a", 200, {**item, "name": None})  # not a deviation
