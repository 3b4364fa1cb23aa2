"""A service's mode describes what runs: `static` only for a site of files, `on_demand`/`persistent` only for a
process. `mode="static"` on a server app was accepted, the app ran as a server and list_services said
`mode: static` (newuser2); the reverse was already refused. Both directions, for the call's mode
(`plan.resolve_mode`, `plan.check_mode`) and for inkmcp.yaml's (`derive_plan`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack, check_mode, resolve_mode
from inkmcp.errors import BuildPlanError, InvalidArgument

from .conftest import write_files

FLASK = "from flask import Flask\napp = Flask(__name__)\n"
SERVER = BuildPlan(stack=Stack.python, source="detected",
                   processes=(ProcessSpec(name="web", command="gunicorn app:app", routed=True),))  # fmt: skip
SITE = BuildPlan(stack=Stack.static, source="call", static_dir="public")


def test_static_on_a_server_is_refused_saying_what_to_pass() -> None:
    with pytest.raises(InvalidArgument) as err:
        resolve_mode(ServiceType.webapp, Mode.static, SERVER)
    text = err.value.render()
    assert text.startswith("Argument 'mode': mode static serves files and runs no process, but this service runs "
                           "one (`gunicorn app:app`)."), text
    assert "Fix: omit mode (a server then runs persistent), or pass 'persistent'" in text and "'on_demand'" in text
    assert "service_type='webapp_static'" in text  # the other way to make the call consistent
    with pytest.raises(InvalidArgument, match="runs no process"):
        resolve_mode(ServiceType.backend, Mode.static, SERVER)


def test_a_process_mode_on_a_static_site_is_still_refused() -> None:
    for mode in (Mode.on_demand, Mode.persistent):
        with pytest.raises(InvalidArgument, match="does not apply to a static site"):
            resolve_mode(ServiceType.webapp_static, mode, SITE)


@pytest.mark.parametrize(("service_type", "requested", "plan", "expected"), [
    (ServiceType.webapp, None, SERVER, Mode.persistent),
    (ServiceType.webapp, Mode.on_demand, SERVER, Mode.on_demand),
    (ServiceType.backend, Mode.persistent, SERVER, Mode.persistent),
    (ServiceType.webapp_static, None, SITE, Mode.static),
    (ServiceType.webapp_static, Mode.static, SITE, Mode.static),
    (ServiceType.webapp, None, SERVER.model_copy(update={"mode": Mode.on_demand}), Mode.on_demand),  # inkmcp.yaml's
    (ServiceType.webapp, Mode.persistent, SERVER.model_copy(update={"mode": Mode.on_demand}), Mode.persistent),
])  # fmt: skip
def test_the_mode_that_runs(service_type: ServiceType, requested: Mode | None, plan: BuildPlan,
                            expected: Mode) -> None:
    assert resolve_mode(service_type, requested, plan) == expected


def test_unknown_kind_is_not_checked_yet() -> None:
    """The tool layer knows the kind only from the call's own arguments; without them the plan decides later."""
    check_mode(Mode.static, static_site=None)
    with pytest.raises(InvalidArgument, match="runs no process"):
        check_mode(Mode.static, static_site=False, runs="python app.py")


def plan_for(root: Path, files: dict[str, str]) -> tuple[BuildPlan, ServiceType]:
    write_files(root, files)
    return derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None,
                       port=None)  # fmt: skip


def test_inkmcp_yaml_static_mode_on_a_server_names_the_file(tmp_path: Path) -> None:
    files = {"app.py": FLASK, "requirements.txt": "flask\n", "Procfile": "web: gunicorn app:app\n",
             "inkmcp.yaml": "services:\n  web:\n    mode: static\n"}
    with pytest.raises(BuildPlanError) as err:
        plan_for(tmp_path, files)
    text = err.value.render()
    assert text.startswith("inkmcp.yaml service 'web' has `mode: static`, but it runs a process"), text
    assert "Argument '" not in text and "Fix: change or remove `mode:` of 'web' in inkmcp.yaml" in text, text


def test_inkmcp_yaml_on_demand_on_a_static_site_names_the_file(tmp_path: Path) -> None:
    files = {"public/index.html": "<h1>hi</h1>",
             "inkmcp.yaml": "services:\n  web:\n    type: webapp_static\n    static_dir: public\n    mode: on_demand\n"}
    with pytest.raises(BuildPlanError, match=r"has `mode: on_demand`, but it serves files"):
        plan_for(tmp_path, files)


def test_inkmcp_yaml_modes_that_fit_are_kept(tmp_path: Path) -> None:
    plan, kind = plan_for(tmp_path, {"app.py": FLASK, "Procfile": "web: gunicorn app:app\n",
                                     "inkmcp.yaml": "services:\n  web:\n    mode: on_demand\n"})  # fmt: skip
    assert (kind, plan.mode, resolve_mode(kind, None, plan)) == (ServiceType.webapp, Mode.on_demand, Mode.on_demand)
