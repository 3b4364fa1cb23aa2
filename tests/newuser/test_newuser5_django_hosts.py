"""Django's ALLOWED_HOSTS as `django-admin startproject` writes it, deployed (newuser5, 2026-12-02).

The same startproject app went live on both providers: on the local provider its URL (web.<project>.localhost)
answered, since debug mode allows localhost names; on Coolify (https://web-<project>.<domain>) the URL answered
400 DisallowedHost, with nothing said. The queued event now says that a literal ALLOWED_HOSTS without '*' refuses
other hosts, and what to change; a settings file that reads it from the environment (or allows '*') gets no note.
Read as deploy_app reads the checkout (`derive_plan`): the note is the same on both providers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.core.deployments import _plan_hints

MANAGE = ("import os, sys\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
          "from django.core.management import execute_from_command_line\nexecute_from_command_line(sys.argv)\n")
STARTPROJECT = "SECRET_KEY = 'django-insecure-x'\nDEBUG = True\n\nALLOWED_HOSTS = []\n\nROOT_URLCONF = 'mysite.urls'\n"


def _notes(root: Path, settings: str) -> list[str]:
    for name, text in {"requirements.txt": "django\ngunicorn\n", "manage.py": MANAGE, "mysite/__init__.py": "",
                       "mysite/settings.py": settings, "mysite/wsgi.py": "application = None\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    plan, _ = derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None,
                          port=None)  # fmt: skip
    return [n for n in plan.notes if "ALLOWED_HOSTS" in n]


@pytest.mark.parametrize("hosts", ["[]", "['example.com', '.localhost']", '[\n    "myapp.example.com",\n]'])
def test_a_literal_allowed_hosts_is_named_in_the_queued_event(tmp_path: Path, hosts: str) -> None:
    notes = _notes(tmp_path, STARTPROJECT.replace("ALLOWED_HOSTS = []", f"ALLOWED_HOSTS = {hosts}"))
    assert len(notes) == 1, notes
    assert notes[0].startswith("Django's `ALLOWED_HOSTS` in mysite/settings.py is ["), notes
    assert "gets 400 (DisallowedHost" in notes[0]
    assert "env_vars={'ALLOWED_HOSTS': '<the host of the URL deploy_app answers>'}" in notes[0]
    # shown in the queued event even when the agent already set ALLOWED_HOSTS or DEBUG (the settings file does
    # not read them: the note is still true)
    plan_notes = [*notes]
    assert _plan_hints(_Plan(plan_notes), {"ALLOWED_HOSTS": "x", "DEBUG": "1"}) == plan_notes  # type: ignore[arg-type]


@pytest.mark.parametrize("settings", [
    STARTPROJECT.replace("ALLOWED_HOSTS = []", "ALLOWED_HOSTS = ['*']"),
    STARTPROJECT.replace("ALLOWED_HOSTS = []", "ALLOWED_HOSTS = os.environ.get('ALLOWED_HOSTS', '').split(',')"),
    STARTPROJECT + "ALLOWED_HOSTS += [os.environ['HOST']]\n",
    STARTPROJECT.replace("ALLOWED_HOSTS = []", "ALLOWED_HOSTS = env.list('ALLOWED_HOSTS')"),
])  # fmt: skip
def test_hosts_from_the_environment_or_a_wildcard_get_no_note(tmp_path: Path, settings: str) -> None:
    assert _notes(tmp_path, settings) == []


class _Plan:
    def __init__(self, notes: list[str]) -> None:
        self.notes = tuple(notes)
