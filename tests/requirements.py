"""What a test needs from this machine, and the switch that turns a missing component into a failure.

Why: the suite's strongest claims (real dockerd + runsc, real sshd, kernel firewalls in network
namespaces, cgroup limits, per-project Unix users) depend on components a developer's laptop may not
have. There a test skips with the reason. In CI a skip would turn a broken machine into a green run,
so `.ci/run` exports INKMCP_REQUIRE_ALL=1 and every missing component fails the run instead.

    from tests.requirements import require, requires

    require("runsc", shutil.which("runsc") is not None, "runsc is not on PATH")   # in a test or fixture
    pytestmark = requires("cgroups", cg.available, f"cgroups unavailable: {cg.reason}")  # as a marker

`requires(...)` evaluates `ok` at import time and applies `require` when each test is set up (the root
conftest's hook), so it replaces `pytest.mark.skipif` one for one. Never write `if os.geteuid() == 0:`
around an assertion: a test that cannot check its claim here must say so through `require`.
"""

from __future__ import annotations

import os
from typing import Final, Literal, get_args

import pytest

Component = Literal[
    "root", "dockerd", "runsc", "sshd", "netns", "cgroups", "npm", "netplan", "redis", "chromium", "rsync",
    "nginx_module",  # --- proxy6: InkMCP's nginx module, built for the installed nginx by `make install`
    "landlock",  # --- landlock: Landlock ABI 6+ (Linux 6.12+), which scopes tenants' abstract sockets and signals
]
COMPONENTS: Final[tuple[str, ...]] = get_args(Component)

REQUIRE_ALL_ENV: Final = "INKMCP_REQUIRE_ALL"
REQUIRE_ENV: Final = "INKMCP_REQUIRE"

# How to get each component, appended to every skip or failure so the reader knows the fix.
HOW_TO_GET: Final[dict[str, str]] = {
    "root": "run the suite as root (CI does: .ci/run)",
    "dockerd": "run scripts/test-docker.sh as root (installs Debian's docker.io)",
    "runsc": "run scripts/test-docker.sh as root (installs Debian's runsc)",
    "sshd": "run scripts/test-system-deps.sh as root (installs openssh-server)",
    "netns": "run as root with CAP_NET_ADMIN/CAP_SYS_ADMIN and iproute2 + iptables (scripts/test-system-deps.sh)",
    "cgroups": "run as root on a host with the memory, cpu and pids cgroup controllers mounted",
    "npm": "run scripts/system-deps.sh (installs Debian's npm)",
    "netplan": "run scripts/test-netplan.sh as root (installs Debian's netplan.io)",
    "redis": "run scripts/system-deps.sh as root (installs Debian's redis-server)",
    "chromium": "run scripts/test-system-deps.sh as root (installs Debian's chromium and chromium-driver)",
    "rsync": "run scripts/test-system-deps.sh as root (installs Debian's rsync)",
    "landlock": "run Linux 6.12+ with landlock in its LSMs (CONFIG_SECURITY_LANDLOCK, lsm=...,landlock)",  # --- ll
    # --- proxy6: the local provider's proxy runs without it (headers-more config), so only its tests need it
    "nginx_module": "run `make install` as root (scripts/system-deps.sh installs the headers nginx's configure needs; "
    "`python -m inkmcp.providers.compute.local.nginx_module` builds InkMCP's module for the installed nginx)",
}

# Components found missing in this session, with the reason: the root conftest prints them at the end.
MISSING: dict[str, str] = {}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class RequirementSettingError(ValueError):
    """INKMCP_REQUIRE_ALL or INKMCP_REQUIRE holds something we cannot read."""


def required_components() -> frozenset[str]:
    """The components whose absence fails the run, from INKMCP_REQUIRE_ALL and INKMCP_REQUIRE.

    Read on every call (not cached) so a test of this mechanism can set the variables with monkeypatch.
    """
    flag = os.environ.get(REQUIRE_ALL_ENV, "").strip().lower()
    if flag not in _TRUE | _FALSE:
        raise RequirementSettingError(
            f"{REQUIRE_ALL_ENV}={os.environ[REQUIRE_ALL_ENV]!r} is not a switch: pass 1 to fail the run when a "
            f"required component is missing, or 0 (or leave it unset) to skip those tests with the reason"
        )
    if flag in _TRUE:
        return frozenset(COMPONENTS)
    named = {c.strip() for c in os.environ.get(REQUIRE_ENV, "").split(",") if c.strip()}
    unknown = sorted(named - set(COMPONENTS))
    if unknown:
        raise RequirementSettingError(
            f"{REQUIRE_ENV} names unknown component(s) {', '.join(unknown)}: pass a comma-separated subset of "
            f"{', '.join(COMPONENTS)} (or set {REQUIRE_ALL_ENV}=1 for all of them)"
        )
    return frozenset(named)


def require(component: str, ok: bool, reason: str) -> None:
    """Continue when `ok`; otherwise skip with `reason`, or fail when `component` is required here.

    Call it from a test or a fixture (a failing session fixture fails every test that uses it).
    """
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: use one of {', '.join(COMPONENTS)}")
    if ok:
        return
    message = f"{component} missing: {reason} (to get it: {HOW_TO_GET[component]})"
    MISSING.setdefault(component, reason)
    if component in required_components():
        pytest.fail(f"{message}; {REQUIRE_ALL_ENV}=1 or {REQUIRE_ENV} makes this a failure, not a skip",
                    pytrace=False)
    pytest.skip(message)


def requires(component: Component, ok: bool, reason: str) -> pytest.MarkDecorator:
    """The marker form of `require` (replaces `pytest.mark.skipif(not ok, reason=...)`)."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: use one of {', '.join(COMPONENTS)}")
    return pytest.mark.requires(component, ok, reason)


def is_root() -> bool:
    return os.geteuid() == 0


def require_root(why: str) -> None:
    """The common case: `why` says what the test does that needs root."""
    require("root", is_root(), f"{why}; running as uid {os.geteuid()}")
