"""The corpus manifest (tests/corpus/apps.toml) is consistent: fast, no server, no bundles needed.

Why: a manifest typo (an argument deploy_app does not take, a duplicated bundle, an app both offered and explained
away) would silently change what the corpus measures; DeployRequest validating each app's arguments is the same
check deploy_app makes, so a renamed tool argument breaks here before it breaks a 15-minute benchmark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inkmcp.core.deployments import DeployRequest
from tests.corpus.corpus import App, load_apps
from tests.corpus.test_corpus import CORPUS_FAST, OFFERED

APPS = load_apps()


@pytest.mark.parametrize("app", APPS, ids=[a.name for a in APPS])
def test_natural_and_retry_arguments_are_deploy_app_arguments(app: App) -> None:
    for retry in (False, True):
        args = app.deploy_args(Path("/srv/repo"), "localhost", retry=retry)
        req = DeployRequest.model_validate(args)  # extra keys or wrong types raise
        assert req.repo_url == "/srv/repo"
        assert "{apps_domain}" not in repr(args)
    # "only what a user would naturally pass": never a start or build command in the first call
    assert not {"start_command", "build_command"} & set(app.args), app.name


def test_manifest_is_consistent() -> None:
    assert len(APPS) >= 20 and len(OFFERED) >= 20
    assert len({a.bundle for a in APPS}) == len(APPS)
    assert len({(a.upstream, a.commit) for a in APPS}) == len(APPS)
    assert all(a.upstream.startswith("https://github.com/") for a in APPS)
    assert all((a.why is None) == a.offered for a in APPS), [a.name for a in APPS if (a.why is None) != a.offered]
    assert CORPUS_FAST <= {a.name for a in OFFERED}
