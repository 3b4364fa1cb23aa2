"""What a failed deployment tells the agent to do next (`DeploymentView.next_step`).

newuser3: a deploy that failed at `starting` because its fixed port was taken sent the agent to the runtime log,
which was empty (no process had run); the error itself named the cause and the fix.
"""

from __future__ import annotations

import uuid

from inkmcp.core.deployments import _render_view


def _next_step(error: str) -> str:
    view = _render_view(uuid.uuid4(), "shop", "web", "failed", None, None, error, [], reused=False)
    assert view.next_step is not None
    return view.next_step


def test_a_failure_after_the_build_points_at_the_error_first_then_the_runtime_log() -> None:
    step = _next_step("starting: port 3000 (the service's fixed `port`) is already in use on this machine; ...")
    assert step.startswith("do what the error says if it names the cause; otherwise read get_logs(")
    assert "scope='runtime'" in step and step.endswith("then call deploy_app again")
    assert "scope='runtime'" in _next_step("health_check: answered 500 on /")


def test_a_failure_in_the_build_points_at_the_build_log() -> None:
    step = _next_step("building: npm install exited with 1")
    assert step == ("read get_logs(project_name='shop', service_name='web', scope='build'), fix the cause, then call "
                    "deploy_app again")
