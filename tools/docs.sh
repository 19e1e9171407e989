#!/usr/bin/env bash
# The offline docs site: nbdev's processed notebooks rendered to static HTML in _site/ (no Quarto, no network at view
# time). Quarto stays the primary path where it is installed: `nbdev-docs` builds _docs/ from nbs/_quarto.yml.
#   bash tools/docs.sh [--out DIR] [--force] [--screenshots]
#   --force        re-process every notebook (nbdev's _proc/ cache otherwise keeps unchanged ones)
#   --screenshots  also save PNG screenshots of three pages to nbs/images/ for the README (needs chromium)
# Serve the result with `python -m http.server -d _site` and open http://127.0.0.1:8000/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=_site; force=(); shots=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --force) force=(--force); shift ;;
    --screenshots) shots=1; shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "docs.sh: error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
command -v node >/dev/null || { echo "docs.sh: error: node is not installed (KaTeX typesets the math at build time): apt-get install nodejs npm" >&2; exit 2; }
# build.py installs KaTeX and mermaid first when needed (`npm ci`, pinned by tools/docsite/package-lock.json)
python tools/docsite/build.py --out "$out" "${force[@]}"
if [ "$shots" = 1 ]; then python tools/docsite/screenshots.py "$out" nbs/images; fi
