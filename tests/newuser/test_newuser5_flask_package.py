"""The Flask tutorial's layout (flaskr/__init__.py holding `def create_app(test_config=None):`, pyproject.toml with
`dependencies = ["flask"]`, no app.py) as deploy_app reads it (newuser5, 2026-12-02).

It was refused with "pass start_command (e.g. 'python app.py' ...)": there is no app.py, and `python -m flaskr` runs
nothing. The refusal now names the command that serves the package's factory (or its `app = Flask(...)`), with the
production server the dependencies list (gunicorn, waitress --call, as Flask's deployment docs do), else Flask's own.

Flask's quickstart (`app.py` ending in `if __name__ == '__main__': app.run(debug=True)`, no gunicorn) ran as
`python app.py`: Flask's server on 127.0.0.1:5000, and the first deploy failed on both providers. A main guard that
only calls `app.run(...)` without `host=` now runs `flask --app app:app run --host 0.0.0.0 --port $PORT`
(tests/e2e/test_newuser5_first_failure.py deploys it on both).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.errors import BuildPlanError

FLASKR = """import os

from flask import Flask


def create_app(test_config=None):
    app = Flask(__name__, instance_relative_config=True)

    @app.route("/hello")
    def hello():
        return "Hello, World!"

    return app
"""
PYPROJECT = ('[project]\nname = "flaskr"\nversion = "1.0.0"\ndependencies = ["flask"]\n\n[build-system]\n'
             'requires = ["flit_core<4"]\nbuild-backend = "flit_core.buildapi"\n')


def _refusal(root: Path, files: dict[str, str]) -> BuildPlanError:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    with pytest.raises(BuildPlanError) as caught:
        derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None, port=None)
    return caught.value


@pytest.mark.parametrize(("deps", "command"), [
    ({"pyproject.toml": PYPROJECT}, "flask --app flaskr:create_app run --host 0.0.0.0 --port $PORT"),
    ({"requirements.txt": "flask\ngunicorn\n"}, "gunicorn 'flaskr:create_app()' --bind 0.0.0.0:$PORT"),
    ({"requirements.txt": "flask\nwaitress\n"}, "waitress-serve --listen=0.0.0.0:$PORT --call flaskr:create_app"),
])  # fmt: skip
def test_the_flask_tutorial_layout_is_told_the_command_that_serves_it(tmp_path: Path, deps: dict[str, str],
                                                                      command: str) -> None:
    error = _refusal(tmp_path, {**deps, "flaskr/__init__.py": FLASKR, "flaskr/db.py": "x = 1\n",
                                "tests/conftest.py": ""})  # fmt: skip
    assert error.argument == "start_command"
    assert error.fix.startswith(f"pass start_command={command!r} (found `def create_app(` in flaskr/__init__.py)"), \
        error.fix
    assert "python app.py" not in error.fix


def test_an_app_object_in_a_package_init_is_named_too(tmp_path: Path) -> None:
    error = _refusal(tmp_path, {"requirements.txt": "flask\n",
                                "shop/__init__.py": "from flask import Flask\n\napp = Flask(__name__)\n"})
    assert error.fix.startswith("pass start_command='flask --app shop:app run --host 0.0.0.0 --port $PORT' "
                                "(found `app = Flask(` in shop/__init__.py)"), error.fix


def test_two_packages_with_a_factory_name_none(tmp_path: Path) -> None:
    error = _refusal(tmp_path, {"requirements.txt": "flask\ngunicorn\n", "one/__init__.py": FLASKR,
                                "two/__init__.py": FLASKR})
    assert "create_app" not in error.fix  # which one to serve is the agent's choice: not guessed


QUICKSTART = ("from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.route('/')\ndef index():\n"
              "    return 'ok'\n\n\n")


@pytest.mark.parametrize(("guard", "runs"), [
    ("if __name__ == '__main__':\n    app.run(debug=True)\n",
     "flask --app app:app run --host 0.0.0.0 --port $PORT"),
    ("if __name__ == '__main__':\n    app.run(port=int(os.environ.get('PORT', 5000)))\n",  # still 127.0.0.1
     "flask --app app:app run --host 0.0.0.0 --port $PORT"),
    ("if __name__ == '__main__':\n    app.run(host='0.0.0.0', port=int(os.environ['PORT']))\n", "python app.py"),
    ("if __name__ == '__main__':\n    init_db()\n    app.run()\n", "python app.py"),  # the guard does more
])  # fmt: skip
def test_flask_quickstart_main_guard_runs_on_port(tmp_path: Path, guard: str, runs: str) -> None:
    (tmp_path / "requirements.txt").write_text("flask\n")
    (tmp_path / "app.py").write_text("import os\n" + QUICKSTART + guard)
    plan, _ = derive_plan(tmp_path, service_name="web", service_type=None, build_command=None, start_command=None,
                          port=None)  # fmt: skip
    assert [p.command for p in plan.processes] == [runs]
