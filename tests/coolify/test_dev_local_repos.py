"""The development hook that lets the Coolify provider deploy local git repositories (for the stand-in's runner)
cannot be switched on against a real Coolify: it needs INKMCP_COOLIFY_DEV_LOCAL_REPOS=1 *and* a loopback
INKMCP_COOLIFY_URL; without it a local path is refused as production must."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from inkmcp.coolify.standin.runner import LOCAL_REPO_HOST, local_repo_path, local_repo_url
from inkmcp.errors import InkError
from inkmcp.providers.compute.coolify import mapping
from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider
from inkmcp.providers.compute.coolify.settings import CoolifySettings

TOKEN = "1|" + "a" * 40


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("INKMCP_COOLIFY_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("url", ["https://coolify.example.com", "http://10.0.1.10:8000", "http://127.0.0.1.nip.io"])
def test_refused_unless_coolify_is_on_loopback(url: str) -> None:
    with pytest.raises(ValidationError, match="loopback"):
        CoolifySettings(url=url, token=TOKEN, dev_local_repos=True)


async def test_the_composition_root_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """app.py reads CoolifySettings through inkmcp.errors.settings_from_env (the one reader of a settings class from
    the environment; app.py had a near-twin of it): the error names the variable and says what it takes."""
    from contextlib import AsyncExitStack

    from inkmcp.app import _compute
    from inkmcp.settings import Settings

    monkeypatch.setenv("INKMCP_COOLIFY_URL", "https://coolify.example.com")
    monkeypatch.setenv("INKMCP_COOLIFY_TOKEN", TOKEN)
    monkeypatch.setenv("INKMCP_COOLIFY_DEV_LOCAL_REPOS", "1")
    settings = Settings(data_dir=tmp_path, compute="coolify")
    async with AsyncExitStack() as stack:
        with pytest.raises(InkError) as caught:
            await _compute(stack, settings, tmp_path, None, "postgresql://unused")  # type: ignore[arg-type]
    assert caught.value.argument == "INKMCP_COOLIFY_DEV_LOCAL_REPOS"
    assert "loopback" in caught.value.message
    assert caught.value.fix is not None and caught.value.fix.startswith(
        "set INKMCP_COOLIFY_DEV_LOCAL_REPOS to development and tests only")  # the field's own description


async def test_production_refuses_local_paths(tmp_path: Path) -> None:
    settings = CoolifySettings(url="http://127.0.0.1:8000", token=TOKEN)  # loopback, but the flag is off
    assert settings.dev_local_repos is False
    provider = CoolifyComputeProvider.from_settings(settings, tmp_path)
    try:
        with pytest.raises(mapping.TenantInputError, match="https"):
            provider._repo_url(str(tmp_path / "repo"))
        assert provider._repo_url("https://github.com/a/b.git") == "https://github.com/a/b.git"
    finally:
        await provider.close()


async def test_on_loopback_with_the_flag_a_local_repo_gets_a_name_only_the_runner_fetches(tmp_path: Path) -> None:
    settings = CoolifySettings(url="http://127.0.0.1:8000", token=TOKEN, dev_local_repos=True)
    provider = CoolifyComputeProvider.from_settings(settings, tmp_path)
    try:
        url = provider._repo_url(str(tmp_path / "repo"))
    finally:
        await provider.close()
    assert url.startswith(f"https://{LOCAL_REPO_HOST}/") and url == local_repo_url(str(tmp_path / "repo"))
    assert local_repo_path(url) == tmp_path / "repo"
    assert local_repo_path("https://github.com/a/b.git") is None  # the runner fetches nothing else
