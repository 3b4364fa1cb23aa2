"""Names that would become IDNA (punycode) DNS labels are refused, with a name that works as the fix.

A project or service name becomes a DNS label (`<service>.<project>.<domain>` locally, `<service>-<project>.<base>`
on Coolify). A label with '--' in its third and fourth characters is reserved for internationalized names:
`xn--80ak6aa92e` is what a browser shows as Cyrillic look-alikes of "apple" (a tenant could dress a project up as
another brand), `xn--abc` is not valid punycode at all. Over a real MCP session: refused, nothing made, and the
suggested name is accepted.
"""

from __future__ import annotations

import pytest

from inkmcp.core.names import check_name, is_name, slugify
from inkmcp.errors import InvalidArgument
from tests.e2e.conftest import local_only
from tests.support import ServerProc, call, call_error, mcp_session


@pytest.mark.asyncio
@local_only("names are checked before any provider is asked; one provider shows it")
async def test_punycode_project_and_service_names_are_refused(server: ServerProc) -> None:
    assert "\u0430" in b"xn--80ak6aa92e".decode("idna")  # really a Cyrillic look-alike (U+0430, not a)
    async with mcp_session(server, server.keys["alice"]) as s:
        for name in ("xn--80ak6aa92e", "xn--abc", "ab--cd"):
            msg = await call_error(s, "ensure_project", name=name)
            assert f"Argument 'name': {name!r} is not a valid name" in msg and "punycode" in msg, msg
            suggestion = slugify(name)
            assert f"e.g. '{suggestion}'" in msg, msg
        listed = await call(s, "list_projects")
        assert not [p for p in listed["projects"] if "--" in p["name"]], listed  # nothing made
        made = await call(s, "ensure_project", name=slugify("xn--abc"))  # the fix works as given
        assert made["created"] is True and slugify("xn--abc") == "xn-abc", made
        msg = await call_error(s, "deploy_app", repo_url="https://example.invalid/x.git", project_name="xn-abc",
                               service_name="xn--web")  # fmt: skip
        assert "Argument 'service_name': 'xn--web' is not a valid name" in msg and "e.g. 'xn-web'" in msg, msg


def test_reserved_labels_and_ordinary_double_hyphens() -> None:
    for name in ("xn--abc", "ab--c", "zz--", "a1--b"):
        assert not is_name(name)
        with pytest.raises(InvalidArgument):
            check_name(name, "project_name")
    for name in ("abc--d", "my-app--x", "web", "a-b"):  # '--' elsewhere is an ordinary LDH label
        assert is_name(name) and check_name(name, "project_name") == name
