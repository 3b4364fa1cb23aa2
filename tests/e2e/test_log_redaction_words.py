"""get_logs redacts secrets, not configuration words.

Seen by driving a real `inkmcp serve` as an agent: a FastAPI app run by uvicorn, after
update_env_vars(LOG_LEVEL="INFO", NODE_ENV="production"), read in get_logs as
"web | [REDACTED]:     Application startup complete." on every line, since every env value of 4+ characters was
redacted as a secret. Configuration words (true, production, INFO, ...) now show, unless their key names a
secret; the app's real secret, printed on the same line, is still hidden (proof from the reader's side).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.conftest import local_only
from tests.e2e.test_deploy import deploy_live
from tests.support import ServerProc, call, git_repo, mcp_session

SECRET = "tok-9f3a1c77e2"
APP = {
    "worker.py": "import os, time\n"
    "while True:\n"
    "    print(os.environ['LOG_LEVEL'] + ': mode=' + os.environ['NODE_ENV'] + ' debug=' + os.environ['DEBUG']\n"
    "          + ' key=' + os.environ['API_TOKEN'] + ' pw=' + os.environ['DB_PASSWORD'], flush=True)\n"
    "    time.sleep(0.3)\n",
    "Procfile": "worker: python worker.py\n",
}


@local_only("redaction is the core's; the provider only hands over the lines")
@pytest.mark.asyncio
async def test_config_words_show_and_secrets_stay_hidden(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "chatty", APP)
    env = {"LOG_LEVEL": "INFO", "NODE_ENV": "production", "DEBUG": "false", "API_TOKEN": SECRET,
           "DB_PASSWORD": "true"}  # a secret-named key is hidden whatever its value
    async with mcp_session(server, server.keys["alice"]) as s:
        await deploy_live(s, repo_url=str(repo), project_name="redactwords", env_vars=env)
        lines: list[str] = []
        for _ in range(50):
            logs = await call(s, "get_logs", project_name="redactwords", tail=20)
            lines = [ln for ln in logs["lines"] if "key=" in ln]
            if lines:
                break
            await asyncio.sleep(0.2)
        assert lines, logs
        assert lines[-1] == "worker | INFO: mode=production debug=false key=[REDACTED] pw=[REDACTED]", lines[-1]
        assert not any(SECRET in ln for ln in logs["lines"])
