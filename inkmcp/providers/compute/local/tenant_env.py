"""The environment tenant code sees: built from scratch, never inherited from InkMCP.

InkMCP's own environment holds its database URL, API tokens and so on; a tenant inheriting it
would read them. So tenant processes get only PATH, HOME, LANG, the service's env (secrets
unwrapped here, in memory, at the last moment), the build output env, PORT and INKMCP_DEPLOYMENT.

INKMCP_DEPLOYMENT (the id of the deployment whose release runs) is set on every provider (Coolify sets it on
each application), so an app, and an agent reading its output, cannot tell the providers apart by it.
"""

from __future__ import annotations

from pydantic import SecretStr

from inkmcp.build.plan import RunAs

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
DEPLOYMENT_ENV = "INKMCP_DEPLOYMENT"


def tenant_env(
    *,
    home: str,
    run_as: RunAs | None,
    service_env: dict[str, SecretStr],
    build_env: dict[str, str],
    port: int | None,
    deployment_id: str | None = None,
) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOME": home, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    if run_as is not None:
        env["USER"] = env["LOGNAME"] = run_as.user
    env.update({k: v.get_secret_value() for k, v in service_env.items()})
    env.update(build_env)
    path = env.get("PATH", "")
    if "/usr/bin" not in path.split(":"):  # a build PATH like "<venv>/bin" must not hide the system
        env["PATH"] = f"{path}:{DEFAULT_PATH}" if path else DEFAULT_PATH
    if port is not None:
        env["PORT"] = str(port)
    if deployment_id is not None:
        env[DEPLOYMENT_ENV] = deployment_id
    return env
