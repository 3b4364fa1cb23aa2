"""A broken Procfile is reported as the repo's file (its path, the line, what is wrong, the line to write), not
as an argument the agent never passed ("Argument 'start_command': Procfile line ..." before)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.errors import BuildPlanError

from .conftest import write_files


def refusal(root: Path, files: dict[str, str], **kw: str) -> str:
    write_files(root, files)
    with pytest.raises(BuildPlanError) as err:
        derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None, port=None,
                    **kw)  # type: ignore[arg-type]  # fmt: skip
    return err.value.render()


@pytest.mark.parametrize(
    ("procfile", "says", "fix"),
    [
        ("# app\nweb gunicorn app:app\n", "Procfile line 2 ('web gunicorn app:app') has no `:` after the process "
         "type 'web'", "change line 2 of Procfile to `web: gunicorn app:app`, commit and push"),
        ("web.1: python app.py\n", "has the process type 'web.1', which is not only letters",
         "change line 1 of Procfile to `web_1: python app.py`, commit and push"),
        (": python app.py\n", "has no process type before the `:`",
         "change line 1 of Procfile to `web: python app.py`"),
        ("web:\n", "Procfile line 1: process type 'web' has an empty command",
         "put the command after `web:` on line 1 of Procfile"),
        ("web: a\nworker: b\nweb: c\n", "process type 'web' is defined twice (lines 1 and 3)",
         "keep one `web:` line in Procfile"),
        ("# nothing here\n", "Procfile defines no processes", "add a line such as `web: python app.py`"),
    ],
)
def test_procfile_errors_name_the_file_line_and_the_fix(tmp_path: Path, procfile: str, says: str, fix: str) -> None:
    text = refusal(tmp_path, {"Procfile": procfile, "app.py": ""})
    assert "Argument '" not in text, text  # the agent passed no start_command: nothing to change there
    assert says in text and f"Fix: {fix}" in text, text


def test_a_monorepo_procfile_is_named_by_its_path(tmp_path: Path) -> None:
    """With app_dir the message names apps/api/Procfile, so the agent edits the right one of several."""
    text = refusal(tmp_path, {"Procfile": "web: python app.py\n", "apps/api/Procfile": "web gunicorn api:app\n",
                              "apps/api/app.py": ""}, app_dir="apps/api")  # fmt: skip
    assert text.startswith("apps/api/Procfile line 1 ('web gunicorn api:app')"), text
    assert "Fix: change line 1 of apps/api/Procfile to `web: gunicorn api:app`" in text, text
