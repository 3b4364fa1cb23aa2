"""The local provider's health_check progress line with the first-deploy settle at (or above) the stability window
(newuser2): it read "every process to stay up 1s (no previous version is serving, so no 1s stability window; ...)".
Real processes: the provider starts a stdlib web app and reports its steps."""

from __future__ import annotations

import pytest

from inkmcp.providers.compute.base import ReleaseFailed, Step
from tests.local.conftest import (  # noqa: F401 (fixtures)
    checkouts,
    data_dir,
    get,
    key_for,
    make_provider,
    no_record,
    project_ids,
    request_for,
    web_plan,
)
from tests.local.test_live_means_live import APP, TimedEvents


async def test_the_line_drops_the_window_it_does_not_skip(make_provider, checkouts, project_ids) -> None:  # noqa: F811
    provider = await make_provider(stability_window=1.0, first_deploy_settle=1.0)
    key = key_for(project_ids())
    events = TimedEvents()
    await provider.release(request_for(key, checkouts({"app.py": APP}), web_plan(), env={"MESSAGE": "v1"}),
                           events, no_record)  # fmt: skip
    line = events.detail[Step.health_check]
    assert "every process to stay up 1s" in line, line
    assert "stability window" not in line, line
    assert (await get(provider, key)).text == "v1"


async def test_an_app_still_starting_at_the_timeout_is_told_it_is_slow(make_provider, checkouts, project_ids) -> None:  # noqa: F811
    """An app that binds $PORT after 70 s (a model load) failed with "never listened on $PORT within 60s; make sure it
    binds 0.0.0.0 or 127.0.0.1 on the PORT env var": its bind was right. The reason now says it was still running,
    names the limit and what to change."""
    provider = await make_provider(health_timeout=1.0)
    key = key_for(project_ids())
    slow = "import time\nprint('loading the model', flush=True)\ntime.sleep(60)\n"
    with pytest.raises(ReleaseFailed) as info:
        await provider.release(request_for(key, checkouts({"app.py": slow}), web_plan()), TimedEvents(), no_record)
    reason = info.value.reason
    assert info.value.step == Step.health_check
    assert "never listened on $PORT=" in reason, reason
    assert "starts slower than this server allows (1s, INKMCP_HEALTH_TIMEOUT)" in reason, reason
    assert "loading the model" in reason, reason
