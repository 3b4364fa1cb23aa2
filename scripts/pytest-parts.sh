#!/usr/bin/env bash
# The suite in two parts (tests/conftest.py SERIAL): everything that may share the machine on $PYTEST_WORKERS
# pytest-xdist workers (whole files per worker, so module fixtures are shared), then the tests that measure time
# against their own clocks, alone. Extra arguments go to both parts (e.g. -m "not slow", -k NAME, a path).
# PYTEST_WORKERS=0: one pytest process, every test in collection order.
# Exit status: non-zero if either part failed; a part that selects no test (pytest's 5) is fine unless both do.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
workers=${PYTEST_WORKERS:-3}  # the Makefile's default
pytest=.venv/bin/pytest
if [ "$workers" = "0" ]; then
  exec "$pytest" -q -ra --durations=40 "$@"
fi
# --no-loadscope-reorder: files go out in the order tests/conftest.py gives them (heaviest first, a shared server's
# package together), not xdist's (most tests first); --file-durations: the data behind that order
"$pytest" -q -ra --durations=40 --file-durations=40 -n "$workers" --dist loadfile --no-loadscope-reorder \
  --part=parallel "$@"
first=$?
echo "--- the tests run alone (tests/conftest.py SERIAL)"
"$pytest" -q -ra --durations=15 --file-durations=15 --part=serial "$@"
second=$?
if [ "$first" -eq 5 ] && [ "$second" -eq 5 ]; then
  echo "no tests selected" >&2
  exit 5
fi
for status in "$first" "$second"; do
  if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
    exit "$status"
  fi
done
exit 0
