#!/usr/bin/env bash
# The whole test suite: exported code in sync with the notebooks, every notebook's inline tests, then pytest.
# pytest runs last so that its summary line is the last line printed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONHASHSEED=0 TRITON_INTERPRET=1 TOKENIZERS_PARALLELISM=false
# Many small ops on 2 shared cores: one intra-op thread per process avoids oversubscription stalls.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

echo "== nbdev-export must leave bytropix/ unchanged"
snap=$(mktemp -d)
cp -r bytropix "$snap/bytropix"
nbdev-export
if ! diff -r -x __pycache__ "$snap/bytropix" bytropix; then
  echo "FAIL: bytropix/ is out of sync with nbs/. Run nbdev-export and commit the notebooks and the exported code together." >&2
  exit 1
fi
rm -rf "$snap"

echo "== nbdev-test"
# Cells flagged `slow` (full default training run, full-corpus builds, long benchmarks; ~13 min on 2 cores) are
# skipped by default; BYTROPIX_SLOW=1 runs them too.
if [ "${BYTROPIX_SLOW:-0}" = "1" ]; then
  nbdev-test --n-workers "${NBDEV_WORKERS:-2}" --timing --flags slow
else
  nbdev-test --n-workers "${NBDEV_WORKERS:-2}" --timing
fi

echo "== pytest"
# Coverage of the package by the pytest tests (the notebooks' inline tests are not counted); pytest-cov prints its
# table before pytest's summary line, which stays the last line printed.
python -m pytest -q -p no:cacheprovider --cov=bytropix --cov-report=term:skip-covered "$@"
