"""The stand-in's projects, environments, applications, env vars and databases behave like Coolify 4.3.11's
controllers (inkmcp/coolify/standin/*.py cite the lines), over real HTTP with plain httpx."""

from __future__ import annotations

import base64

from inkmcp.coolify.standin import CoolifyStandin
from tests.coolify.standin_support import api, seed, wait_for


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- projects and environments ---------------------------------------------------------------------------


def test_project_comes_with_production_and_environments_are_found_by_name_or_uuid(standin: CoolifyStandin) -> None:
    team = seed(standin)
    c = team.client
    project = c.get(f"/projects/{team.project}").json()
    assert [e["name"] for e in project["environments"]] == ["production"]
    assert c.get(f"/projects/{team.project}/{team.environment}").json()["name"] == "production"
    assert c.post("/projects", json={"name": "ab"}).status_code == 422  # nameRules: at least 3 characters
    assert c.post("/projects", json={"name": "ok name", "color": "red"}).json()["errors"] == {
        "color": ["This field is not allowed."]}
    r = c.post(f"/projects/{team.project}/environments", json={"name": "staging"})
    assert r.status_code == 201
    staging = r.json()["uuid"]
    assert c.post(f"/projects/{team.project}/environments", json={"name": "staging"}).status_code == 409
    assert [e["name"] for e in c.get(f"/projects/{team.project}/environments").json()] == ["production", "staging"]
    assert c.delete(f"/projects/{team.project}/environments/{staging}").status_code == 200
    assert c.get(f"/projects/{team.project}/staging").status_code == 404
    assert c.get("/projects/nope").json() == {"message": "Project not found."}


def test_project_with_resources_cannot_be_deleted_until_the_queued_delete_is_done(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app()
    assert team.client.delete(f"/projects/{team.project}").json() == {
        "message": "Project has resources, so it cannot be deleted."}
    env = team.client.get(f"/projects/{team.project}/production").json()
    assert [a["uuid"] for a in env["applications"]] == [app]
    assert team.client.delete(f"/applications/{app}", params={"delete_volumes": "false"}).json() == {
        "message": "Application deletion request queued."}
    assert team.client.get(f"/applications/{app}").status_code == 200  # DeleteResourceJob has not run yet
    wait_for(lambda: team.client.get(f"/applications/{app}").status_code == 404, what="the queued delete")
    assert standin.deleted_with[app] == {"delete_configurations": True, "delete_volumes": False,
                                         "docker_cleanup": True, "delete_connected_networks": True}
    assert team.client.delete(f"/projects/{team.project}").status_code == 200


# -- applications ----------------------------------------------------------------------------------------


def test_create_refuses_unknown_keys_as_a_whole_and_creates_nothing(standin: CoolifyStandin) -> None:
    team = seed(standin)
    r = team.client.post("/applications/public",
                         json=team.app_body(custom_docker_run_options="--runtime=runc", run_as="root", fqdn="x"))
    assert r.status_code == 422
    assert r.json()["errors"] == {"run_as": ["This field is not allowed."], "fqdn": ["This field is not allowed."]}
    assert standin.applications == {}
    r = team.client.post("/applications/public", json=team.app_body(environment_name=None, environment_uuid=None))
    assert r.json() == {"message": "You need to provide at least one of environment_name or environment_uuid."}
    r = team.client.post("/applications/public", json=team.app_body(build_pack="heroku"))
    assert r.status_code == 422 and "build_pack" in r.json()["errors"]
    r = team.client.post("/applications/public", json=team.app_body(start_command="node app.js; rm -rf /"))
    assert r.status_code == 422 and "start_command" in r.json()["errors"]
    r = team.client.post("/applications/public", json=team.app_body(custom_labels="not base64!"))
    assert r.json()["errors"] == {"custom_labels": "The custom_labels should be base64 encoded."}
    assert standin.applications == {}


def test_create_on_a_build_server_or_a_foreign_server_is_refused(standin: CoolifyStandin) -> None:
    team = seed(standin)
    builder = standin.add_server("10.9.9.9", is_build_server=True, usable=True)
    other_team = standin.add_server("10.9.9.10", team_id=7, usable=True)
    r = team.client.post("/applications/public", json=team.app_body(server_uuid=builder.uuid))
    assert r.status_code == 422
    assert r.json()["errors"] == {"server_uuid": [
        "The specified server is configured as a build server and cannot host resources."]}
    r = team.client.post("/applications/public", json=team.app_body(server_uuid=other_team.uuid))
    assert (r.status_code, r.json()) == (404, {"message": "Server not found."})


def test_public_app_fields_domain_from_the_wildcard_and_the_201_answer(standin: CoolifyStandin) -> None:
    team = seed(standin)
    r = team.client.post("/applications/public", json=team.app_body(
        build_pack="static", publish_directory="/dist", git_commit_sha="0123abc", limits_memory="256m",
        limits_cpus="0.5", pre_deployment_command="python manage.py migrate", start_command="npm start",
        is_static=True, instant_deploy=False, name="web"))
    assert r.status_code == 201
    uuid = r.json()["uuid"]
    assert r.json()["domains"] == f"http://{uuid}.run-1.apps.test"  # generateUrl from settings.wildcard_domain
    app = team.app(uuid)
    assert app["build_pack"] == "static" and app["publish_directory"] == "/dist"
    assert app["git_commit_sha"] == "0123abc" and app["git_repository"] == "inkmcp/demo"  # github.com -> owner/repo
    assert (app["limits_memory"], app["limits_cpus"]) == ("256m", "0.5")
    assert app["pre_deployment_command"] == "python manage.py migrate"
    assert app["settings"]["is_static"] is True and app["status"] == "exited"
    assert standin.deployments == {}  # instant_deploy false: nothing queued


def test_ports_exposes_is_optional_and_checked_when_sent(standin: CoolifyStandin) -> None:
    team = seed(standin)
    r = team.client.post("/applications/public", json=team.app_body(ports_exposes=None))
    assert r.status_code == 201  # nullable since migration 2026_03_26_000000
    assert "ports_exposes" not in team.app(r.json()["uuid"])
    r = team.client.post("/applications/public", json=team.app_body(ports_exposes="3000:3000"))
    assert r.status_code == 422 and "ports_exposes" in r.json()["errors"]
    r = team.client.patch(f"/applications/{team.create_app()}", json={"ports_exposes": "80,http"})
    assert r.json()["errors"] == {"ports_exposes": "The ports_exposes should be a comma separated list of numbers."}


def test_dockerfile_app_ignores_ports_exposes_and_dockerimage_splits_the_tag(standin: CoolifyStandin) -> None:
    team = seed(standin)
    body = {k: v for k, v in team.app_body(ports_exposes="8080").items()
            if k not in ("git_repository", "git_branch", "build_pack")}
    r = team.client.post("/applications/dockerfile", json={**body, "dockerfile": "FROM nginx\nEXPOSE 8080"})
    assert r.json()["errors"] == {"dockerfile": "The dockerfile should be base64 encoded."}
    r = team.client.post("/applications/dockerfile", json={**body, "dockerfile": b64("FROM nginx\nEXPOSE 8080\n")})
    assert r.status_code == 201
    app = team.app(r.json()["uuid"])
    assert app["ports_exposes"] == "80" and app["build_pack"] == "dockerfile"  # NOTES.md §b: PATCH it after
    assert app["dockerfile"] == "FROM nginx\nEXPOSE 8080\n"  # stored decoded; sensitive (root token here)
    reader = api(standin, standin.add_token("read"))
    assert "dockerfile" not in reader.get(f"/applications/{app['uuid']}").json()
    r = team.client.post("/applications/dockerimage", json={**body, "docker_registry_image_name": "nginx:1.27"})
    app = team.app(r.json()["uuid"])
    assert (app["docker_registry_image_name"], app["docker_registry_image_tag"]) == ("nginx", "1.27")
    assert app["build_pack"] == "dockerimage"


def test_custom_labels_are_replaced_at_create_and_kept_on_patch(standin: CoolifyStandin) -> None:
    team = seed(standin)
    mine = b64("sablier.enable=true\nsablier.group=g1")
    uuid = team.create_app(custom_labels=mine)
    labels = team.app(uuid)["custom_labels"]
    assert "sablier.enable=true" not in labels and "traefik.enable=true" in labels
    assert team.client.patch(f"/applications/{uuid}", json={"custom_labels": mine}).status_code == 200
    assert team.app(uuid)["custom_labels"] == mine
    team.client.patch(f"/applications/{uuid}", json={"domains": "https://shop.example.com"})
    relabelled = team.app(uuid)
    assert relabelled["fqdn"] == "https://shop.example.com" and "shop.example.com" in relabelled["custom_labels"]


def test_sensitive_columns_need_read_sensitive(standin: CoolifyStandin) -> None:
    team = seed(standin)
    uuid = team.create_app()
    team.client.post(f"/applications/{uuid}/envs", json={"key": "SECRET", "value": "s3cr3t"})
    reader = api(standin, standin.add_token("read"))
    app = reader.get(f"/applications/{uuid}").json()
    assert "custom_labels" not in app and "custom_labels" in team.app(uuid)
    envs = reader.get(f"/applications/{uuid}/envs").json()
    assert envs and all("value" not in e and "real_value" not in e for e in envs)
    assert {e["value"] for e in team.client.get(f"/applications/{uuid}/envs").json()} == {"s3cr3t"}
    writer = api(standin, standin.add_token("write"))
    assert writer.get(f"/applications/{uuid}").json() == {"message": "Missing required permissions: read"}
    assert writer.post("/deploy", params={"uuid": uuid}).status_code == 403  # deploy needs `deploy`


def test_domains_conflict_409_unless_forced_and_invalid_domains_list(standin: CoolifyStandin) -> None:
    team = seed(standin)
    team.create_app(domains="https://a.example.com")
    r = team.client.post("/applications/public", json=team.app_body(domains="https://A.example.com/"))
    assert r.status_code == 409 and r.json()["conflicts"][0]["domain"] == "a.example.com"
    r = team.client.post("/applications/public", json=team.app_body(domains="a.example.com"))
    assert r.status_code == 422 and r.json()["errors"] == {"domains": ["Invalid URL: a.example.com"]}
    other = team.create_app()  # on PATCH validateDataApplications runs first: `errors` is a JSON list
    r = team.client.patch(f"/applications/{other}", json={"domains": "ftp://a.example.com"})
    assert r.json()["errors"] == ["Invalid URL scheme: ftp for URL: ftp://a.example.com. Only http and https are "
                                  "supported."]
    r = team.client.post("/applications/public",
                         json=team.app_body(domains="https://a.example.com", force_domain_override=True))
    assert r.status_code == 201


def test_patch_domains_is_dropped_silently_when_the_server_runs_no_proxy(standin: CoolifyStandin) -> None:
    team = seed(standin)
    uuid = team.create_app()
    before = team.app(uuid)["fqdn"]
    team.servers[0].proxy["type"] = "NONE"
    assert team.client.patch(f"/applications/{uuid}", json={"domains": "https://x.example.com"}).status_code == 200
    assert team.app(uuid)["fqdn"] == before
    r = team.client.patch(f"/applications/{uuid}", json={"fqdn": "https://x.example.com"})
    assert r.json()["errors"] == {"fqdn": ["This field is not allowed."]}  # NOTES.md §h #9502


# -- env vars --------------------------------------------------------------------------------------------


def test_envs_preview_twin_conflict_patch_by_key_and_delete(standin: CoolifyStandin) -> None:
    team = seed(standin)
    uuid = team.create_app()
    c = team.client
    r = c.post(f"/applications/{uuid}/envs", json={"key": "PORT", "value": "3000", "is_buildtime": False})
    assert r.status_code == 201
    env_uuid = r.json()["uuid"]
    envs = c.get(f"/applications/{uuid}/envs").json()
    assert [(e["key"], e["is_preview"]) for e in envs] == [("PORT", False), ("PORT", True)]
    assert envs[0]["is_buildtime"] is False and envs[0]["is_runtime"] is True
    assert c.post(f"/applications/{uuid}/envs", json={"key": "PORT", "value": "1"}).status_code == 409
    assert c.post(f"/applications/{uuid}/envs", json={"key": "1BAD", "value": "1"}).status_code == 422
    r = c.patch(f"/applications/{uuid}/envs", json={"key": "PORT", "value": "4000"})
    assert r.status_code == 201 and r.json()["value"] == "4000" and r.json()["uuid"] == env_uuid
    assert c.patch(f"/applications/{uuid}/envs", json={"key": "NOPE", "value": "1"}).status_code == 404
    assert c.delete(f"/applications/{uuid}/envs/{env_uuid}").json() == {"message": "Environment variable deleted."}
    assert [e["is_preview"] for e in c.get(f"/applications/{uuid}/envs").json()] == [True]


def test_bulk_upserts_drops_unknown_item_keys_and_keeps_items_before_an_invalid_one(
        standin: CoolifyStandin) -> None:
    team = seed(standin)
    uuid = team.create_app()
    c = team.client
    c.post(f"/applications/{uuid}/envs", json={"key": "A", "value": "1"})
    r = c.patch(f"/applications/{uuid}/envs/bulk",
                json={"data": [{"key": "A", "value": "2", "color": "red"}, {"key": "B", "value": "3"}]})
    assert r.status_code == 201 and [(e["key"], e["value"]) for e in r.json()] == [("A", "2"), ("B", "3")]
    r = c.patch(f"/applications/{uuid}/envs/bulk", json={"data": [{"key": "C", "value": "4"}, {"key": "-x"}]})
    assert r.status_code == 422
    values = {e["key"]: e["value"] for e in c.get(f"/applications/{uuid}/envs").json() if not e["is_preview"]}
    assert values == {"A": "2", "B": "3", "C": "4"}  # C was saved before the invalid item stopped the loop
    assert c.patch(f"/applications/{uuid}/envs/bulk", json={"data": []}).status_code == 400


def test_shown_once_values_stay_hidden_even_for_sensitive_tokens(standin: CoolifyStandin) -> None:
    team = seed(standin)
    uuid = team.create_app()
    team.client.post(f"/applications/{uuid}/envs", json={"key": "K", "value": "v", "is_shown_once": True,
                                                         "is_literal": True})
    assert all("value" not in e for e in team.client.get(f"/applications/{uuid}/envs").json())


# -- databases -------------------------------------------------------------------------------------------


def test_postgresql_create_answers_201_with_urls_and_get_hides_them_without_sensitive(
        standin: CoolifyStandin) -> None:
    team = seed(standin)
    body = {"project_uuid": team.project, "server_uuid": team.servers[1].uuid, "environment_name": "production",
            "environment_uuid": team.environment, "postgres_user": "app", "postgres_db": "shop",
            "postgres_password": "p@ss/word", "limits_memory": "512m", "is_public": True, "public_port": 5433,
            "instant_deploy": True}
    r = team.client.post("/databases/postgresql", json=body)
    assert r.status_code == 201, r.text
    uuid = r.json()["uuid"]
    assert r.json()["internal_db_url"] == f"postgres://app:p%40ss%2Fword@{uuid}:5432/shop"
    assert r.json()["external_db_url"] == "postgres://app:p%40ss%2Fword@10.77.0.2:5433/shop"
    assert team.client.post("/databases/postgresql", json={**body, "name": "again"}).json() == {
        "message": "Public port already used by another database."}
    full = team.client.get(f"/databases/{uuid}").json()
    assert full["postgres_password"] == "p@ss/word" and full["limits_memory"] == "512m"
    wait_for(lambda: team.client.get(f"/databases/{uuid}").json()["status"] == "running:healthy",
             what="StartDatabase (instant_deploy)")
    reader = api(standin, standin.add_token("read")).get(f"/databases/{uuid}").json()
    assert not {"postgres_password", "internal_db_url", "external_db_url"} & set(reader)
    assert any("GET /api/v1/databases/" in d for d in standin.deviations_seen)  # the spec says a string
    assert team.client.delete(f"/databases/{uuid}").status_code == 200
    wait_for(lambda: team.client.get(f"/databases/{uuid}").status_code == 404, what="the queued database delete")


def test_postgresql_refusals_and_the_unenforced_common_rules(standin: CoolifyStandin) -> None:
    team = seed(standin)
    base = {"project_uuid": team.project, "server_uuid": team.servers[0].uuid, "environment_name": "production",
            "environment_uuid": team.environment}
    r = team.client.post("/databases/postgresql", json={**base, "postgres_version": "17"})
    assert r.json()["errors"] == {"postgres_version": ["This field is not allowed."]}
    r = team.client.post("/databases/postgresql", json={**base, "is_public": True})
    assert r.status_code == 201 and "external_db_url" not in r.json()  # is_public dropped without a port
    r = team.client.post("/databases/postgresql", json={**base, "public_port": 80, "is_public": True})
    assert r.json()["errors"] == {"public_port": "The public port should be between 1024 and 65535."}
    r = team.client.post("/databases/postgresql", json={**base, "postgres_conf": "max_connections=5"})
    assert r.json()["errors"] == {"postgres_conf": "The postgres_conf should be base64 encoded."}
    # DatabasesController.php:1874 `$validator->failed()` before validation: the type rules never fire
    r = team.client.post("/databases/postgresql", json={**base, "limits_memory": 512})
    assert r.status_code == 201


def test_database_start_stop_restart_and_server_resources(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app()
    r = team.client.post("/databases/postgresql", json={
        "project_uuid": team.project, "server_uuid": team.servers[0].uuid, "environment_name": "production",
        "environment_uuid": team.environment})
    db = r.json()["uuid"]
    assert team.client.post(f"/databases/{db}/stop").json() == {"message": "Database is already stopped."}
    assert team.client.post(f"/databases/{db}/start").json() == {"message": "Database starting request queued."}
    wait_for(lambda: team.client.get(f"/databases/{db}").json()["status"] == "running:healthy", what="db start")
    assert team.client.post(f"/databases/{db}/start").json() == {"message": "Database is already running."}
    resources = team.client.get(f"/servers/{team.servers[0].uuid}/resources").json()
    assert sorted((x["uuid"], x["type"]) for x in resources) == sorted(
        [(app, "application"), (db, "standalone-postgresql")])
    assert team.client.get(f"/servers/{team.servers[1].uuid}/resources").json() == []
    assert team.client.post(f"/databases/{db}/stop").status_code == 200
    wait_for(lambda: team.client.get(f"/databases/{db}").json()["status"] == "exited", what="db stop")


def test_values_read_back_with_the_column_types_and_compose_domains_as_json_text(standin: CoolifyStandin) -> None:
    team = seed(standin)
    uuid = team.create_app(health_check_enabled="1", health_check_return_code="204", health_check_port="3000",
                           limits_cpu_shares="512")
    app = team.app(uuid)  # the spec's types: a numeric string is stored in an integer column
    assert (app["health_check_enabled"], app["health_check_return_code"], app["limits_cpu_shares"]) == (
        True, 204, 512)
    assert app["health_check_port"] == "3000"
    r = team.client.post("/applications/public", json=team.app_body(build_pack="dockercompose",
                                                                    domains="https://c.example.com"))
    assert r.status_code == 422 and "docker_compose_domains" in r.json()["errors"]["domains"]
    compose = team.create_app(build_pack="dockercompose", ports_exposes=None, docker_compose_domains=[
        {"name": "web", "domain": "https://c.example.com"}])
    assert team.app(compose)["docker_compose_domains"] == r'{"web":{"domain":"https:\/\/c.example.com"}}'


def test_add_servers_with_capacity_facts_wildcard_domains_and_a_build_server(standin: CoolifyStandin) -> None:
    token = standin.add_token("read")
    nodes = standin.add_servers(3, capacities=[{"cpus": 2, "memory_mb": 2048}, {"cpus": 8, "memory_mb": 32768},
                                               {"cpus": 4, "memory_mb": 8192, "labels": {"tier": "gpu"}}])
    builder = standin.add_server("10.5.5.5", name="build", is_build_server=True, usable=True)
    listed = {s["name"]: s for s in api(standin, token).get("/servers").json()}
    assert sorted(listed) == ["build", "run-1", "run-2", "run-3"]
    assert listed["run-2"]["settings"]["wildcard_domain"] == "http://run-2.apps.test"
    assert listed["run-2"]["is_usable"] is True and listed["run-2"]["settings"]["is_build_server"] is False
    assert listed["build"]["settings"]["is_build_server"] is True and builder.capacity == {}
    assert [n.capacity["memory_mb"] for n in nodes] == [2048, 32768, 8192]
    assert nodes[2].capacity["labels"] == {"tier": "gpu"} and nodes[0].capacity["disk_gb"] == 80
    assert standin.add_servers(1)[0].name == "run-4"  # numbering continues


def test_health_version_and_the_api_switch(standin: CoolifyStandin) -> None:
    import httpx

    assert httpx.get(standin.url + "/api/health").text == "OK"  # no token needed
    root = api(standin, standin.add_token("read", "write"))
    member = api(standin, standin.add_token("read", "write", team_id=3))
    assert root.get("/version").text == "4.3.11"
    assert root.post("/disable").json() == {"message": "API disabled."}
    assert root.get("/version").json() == {"success": True, "message": "API is disabled."}
    assert member.post("/enable").status_code == 403  # only the root team may switch it
    assert root.get("/enable").status_code == 405
    assert root.post("/enable").json() == {"message": "API enabled."}
    assert root.get("/projects").status_code == 200
