#!/usr/bin/env bash
# The long fuzzing profile of the input readers and the config: 2,000 hypothesis examples per
# property (make test runs 40). Usage: bench/fuzz.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
CURAMIX_FUZZ=long .venv/bin/python -m pytest tests/io/test_fuzz_readers.py -q "$@"
