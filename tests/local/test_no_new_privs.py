"""No setuid or file-capability binary raises a tenant process's rights (PR_SET_NO_NEW_PRIVS).

The egress table and the bind guard tell tenants apart by uid, and the sandbox drops every privilege: a
setuid-root program on the host (su, mount, passwd, a file-capability `ping`, or one an operator installed) would
hand a tenant's code root's uid, or a capability, back. Both start paths set no_new_privs after the drop: the
build steps' (`build.process`) and the runtime's (`inkspawn`). The attack: a setuid-root copy of `id`, run from a
build step and from the app; before, both printed euid 0.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.build.plan import BuildPlan, ProcessSpec, Stack
from tests.local.conftest import PY, WEB_APP, Events, key_for, no_record, request_for
from tests.requirements import requires
from tests.support import traversable_tmpdir

pytestmark = requires("root", os.geteuid() == 0, "tenant processes drop privileges only when InkMCP is root")


@pytest.fixture
def setuid_id() -> Iterator[Path]:
    """A setuid-root copy of `id` every user may run."""
    where = traversable_tmpdir("inkmcp-suid-")
    target = where / "id"
    shutil.copy2("/usr/bin/id", target)
    os.chown(target, 0, 0)
    target.chmod(stat.S_ISUID | 0o755)
    yield target
    shutil.rmtree(where, ignore_errors=True)


async def test_a_setuid_root_binary_gives_tenant_code_no_root(make_provider, checkouts, project_ids, data_dir,
                                                              setuid_id: Path) -> None:  # fmt: skip
    app = (f"import subprocess\nopen('app.euid', 'w').write(subprocess.run(['{setuid_id}', '-u'], "
           "capture_output=True, text=True).stdout)\n" + WEB_APP)
    plan = BuildPlan(
        stack=Stack.none, source="call", build_command=f"{setuid_id} -u > build.euid",
        processes=(ProcessSpec(name="web", command=f"exec {PY} app.py", routed=True),),
    )  # fmt: skip
    provider = await make_provider()
    key = key_for(project_ids())
    request = request_for(key, checkouts({"app.py": app}), plan)
    await provider.release(request, Events(), no_record)
    src = data_dir / "services" / key.service_id / "releases" / request.deployment_id / "src"
    tenant_uid = src.stat().st_uid
    assert tenant_uid != 0
    assert (src / "build.euid").read_text().strip() == str(tenant_uid)  # before: 0
    for _ in range(100):  # the app writes it as it starts
        if (src / "app.euid").exists() and (src / "app.euid").read_text():
            break
        await asyncio.sleep(0.05)
    assert (src / "app.euid").read_text().strip() == str(tenant_uid)  # before: 0


def test_git_steps_run_as_the_tenant_with_no_new_privileges(setuid_id: Path) -> None:
    """Git steps (fetch, archive: a tenant's mirror may hold hooks) start through `setpriv`, not the sandbox."""
    from types import SimpleNamespace

    from inkmcp.build.plan import RunAs
    from inkmcp.build.source import _as_tenant

    nobody = RunAs(user="nobody", uid=65534, gid=65534, home="/nonexistent")
    argv, kwargs = _as_tenant([str(setuid_id), "-u"], SimpleNamespace(run_as=nobody))  # type: ignore[arg-type]
    assert kwargs == {} and Path(argv[0]).name == "setpriv"
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd="/")
    assert done.stdout.strip() == "65534"  # before: 0
    status = subprocess.run([*argv[:-2], "/bin/grep", "NoNewPrivs", "/proc/self/status"], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert status.split() == ["NoNewPrivs:", "1"], status
