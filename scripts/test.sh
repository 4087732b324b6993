#!/usr/bin/env bash
# Install gradlab with its test extras (torch pinned to the CPU build 2.13.0) and run the tests.
# WordNet for the EDA augmentation comes from Debian's wordnet-base when apt is available.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null && [ ! -d /usr/share/wordnet ] && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null) \
    || echo "note: could not install wordnet-base; EDA tests will be skipped"
fi
python -m pip install -q -e ".[test]"
# one worker per core (pytest-xdist); GRADLAB_TEST_WORKERS=0 runs in one process
python -m pytest -q -n "${GRADLAB_TEST_WORKERS:-auto}" "$@"
