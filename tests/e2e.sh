#!/bin/bash
# End-to-end tests: pytest drives the real jobd binary against real servers it
# starts itself (tests/e2e/conftest.py). Run by `make check`, or directly.
cd "${JOBD_SRCDIR:-$(dirname "$0")/..}" || exit 1
export JOBD_BIN="${JOBD_BIN:-$PWD/src/jobd}"
# Debian's pytest and redis-py live with /usr/bin/python3, whatever else is on PATH.
exec /usr/bin/python3 -m pytest -v -p no:cacheprovider \
    --junitxml="${JOBD_BUILDDIR:-$PWD}/tests/e2e-results.xml" tests/e2e "$@"
