"""The stand-in reads back an unset nullable command column as null, as Coolify 4.3.11 does (the Application
model serialises every column), not as a missing key: a client that tells "absent" from "null" must see the
same answer from both. The `standin` fixture also checks every answer against the published spec."""

from __future__ import annotations

from inkmcp.coolify.standin import CoolifyStandin
from tests.coolify.standin_support import seed


def test_an_app_created_without_a_pre_deployment_command_reads_it_as_null(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.app(team.create_app(instant_deploy=False))
    assert "pre_deployment_command" in app and app["pre_deployment_command"] is None, app
    assert app["post_deployment_command"] is None
    listed = next(a for a in team.client.get("/applications").json() if a["uuid"] == app["uuid"])
    assert listed["pre_deployment_command"] is None  # the list serialises the same model


def test_a_pre_deployment_command_set_and_cleared_reads_back_as_sent(standin: CoolifyStandin) -> None:
    team = seed(standin)
    uuid = team.create_app(instant_deploy=False, pre_deployment_command="python manage.py migrate")
    assert team.app(uuid)["pre_deployment_command"] == "python manage.py migrate"
    r = team.client.patch(f"/applications/{uuid}", json={"pre_deployment_command": None})
    assert r.status_code == 200, r.text
    assert team.app(uuid)["pre_deployment_command"] is None
