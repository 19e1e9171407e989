"""Screenshots of three pages of a built site for the README: `python tools/docsite/screenshots.py SITE OUTDIR`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import chromium, missing, screenshot, serve  # noqa: E402

PAGES = {'index.html': 'docs_index.png', 'geometry.html': 'docs_geometry.png', 'wubu.html': 'docs_wubu.png'}


def main(site: Path, out: Path) -> int:
    if why := missing():
        print(f'screenshots: error: {why}', file=sys.stderr)
        return 2
    with serve(site) as url, chromium() as driver:
        for page, name in PAGES.items():
            screenshot(driver, url + page, out/name)
            print(f'screenshots: {out/name}')
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 3: sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
