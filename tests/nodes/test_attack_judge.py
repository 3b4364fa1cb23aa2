"""The attack runner's verdicts (inkmcp/nodes/attacks.py), without a box: what makes a probe an escape."""

from __future__ import annotations

from pathlib import Path

from inkmcp.nodes.attacks import Target, judge

SANDBOXED = "kernel=4.4.0\npid1=sleep\ncapeff=00000000a80405fb\nsecret=unreadable\ndrop=failed\ndocker_api=none\n"


def _target(tmp_path: Path) -> Target:
    t = Target(box=tmp_path, docker_host="unix:///nonexistent", work=tmp_path)
    t.reset_host_marks()
    return t


def test_clean_gvisor_probe_is_sandboxed(tmp_path):
    outcome, evidence = judge((SANDBOXED), _target(tmp_path))
    assert outcome == "sandboxed", evidence
    assert evidence.startswith("kernel 4.4.0,")


def test_host_kernel_is_an_escape(tmp_path):
    outcome, evidence = judge((SANDBOXED.replace("4.4.0", "6.18.0-1-amd64")), _target(tmp_path))
    assert outcome == "escaped" and "host kernel 6.18.0-1-amd64" in evidence


def test_secret_read_is_an_escape_even_under_gvisor(tmp_path):
    t = _target(tmp_path)
    outcome, evidence = judge((SANDBOXED.replace("secret=unreadable", f"secret={t.token}")), t)
    assert outcome == "escaped" and "read the host secret" in evidence
    # A file that holds the token on a later line (a neighbour's compose file with its password) counts too.
    outcome, _ = judge(SANDBOXED.replace("secret=unreadable", f"secret=environment:\n  PASSWORD: {t.token}"), t)
    assert outcome == "escaped"


def test_file_on_the_host_is_an_escape_whatever_the_probe_says(tmp_path):
    t = _target(tmp_path)
    t.drop.write_text("pwned\n")  # the host side is the judge, not the container's own report
    outcome, evidence = judge((SANDBOXED), t)
    assert outcome == "escaped" and "wrote" in evidence


def test_docker_api_answer_is_an_escape(tmp_path):
    probe = SANDBOXED.replace("docker_api=none", "docker_api=/var/run/docker.sock")
    outcome, evidence = judge((probe), _target(tmp_path))
    assert outcome == "escaped" and "Docker API answered" in evidence


def test_missing_probe_lines_never_count_as_sandboxed(tmp_path):
    outcome, _ = judge(("garbage\n"), _target(tmp_path))
    assert outcome == "escaped"


def test_secret_is_fresh_per_target_and_root_only(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _target(tmp_path / "a"), _target(tmp_path / "b")
    assert a.token != b.token
    assert a.secret.read_text().strip() == a.token
    assert a.secret.stat().st_mode & 0o077 == 0
