"""The corpus apps' code is not in the repository (apps.toml's header: fetched third-party code stays out of our
commits), so a clone on a machine that never received the bundles cannot deploy them. There, test_corpus.py is not
collected and the run's summary says so, with where the bundles are looked for; the manifest check
(test_manifest.py) needs no bundles and always runs. Not a skip: nothing the project's own files could install is
missing, the code itself is absent by rule.
"""

from __future__ import annotations

from typing import Any

from tests.corpus.corpus import bundle_dirs, load_apps

_MISSING = sorted(
    app.bundle for app in load_apps() if app.offered and not any((d / app.bundle).is_file() for d in bundle_dirs())
)
collect_ignore = ["test_corpus.py"] if _MISSING else []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _MISSING:
        terminalreporter.write_line(
            f"corpus: tests/corpus/test_corpus.py not collected: {len(_MISSING)} app bundle(s) absent from "
            f"{', '.join(map(str, bundle_dirs()))} (the apps' code is kept out of the repository; "
            "INKMCP_CORPUS_BUNDLES names another directory)"
        )
