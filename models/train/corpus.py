"""Real pages for training and evaluation: born-digital PDFs from Debian documentation packages,
rendered with poppler, their words and boxes taken from the PDF's text layer.

A page is kept only when its text layer can be trusted as ground truth (see `check_page`); each
kept word's box is shrunk to the ink under it, so boxes are as tight as the glyphs a reader sees.
Packages are split three ways and a package never crosses splits:

- `test`: the packages reserved for independent evaluation (`cargo xtask accuracy`). Never used
  for training or for choosing anything.
- `val`: packages held out of training, for choosing settings and checkpoints.
- `train`: everything the models learn from.

    python models/train/corpus.py --split train --out ~/.cache/kiln/corpus --pages-per-package 60

writes `OUT/<split>/<name>.png` and `<name>.json` ({"words": [{"text", "box": [x0, y0, x1, y1]}],
"dpi", "package", "pdf", "page"}), and `OUT/<split>/index.json`. The .deb files and their PDFs are
cached under `OUT/debs` and `OUT/pkgs`; nothing is installed system-wide.
"""

import argparse
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image

# Reserved for independent evaluation: never trained or tuned on.
TEST = [
    "asymptote-doc", "auto-multiple-choice-doc-pdf", "c++-annotations-pdf", "docbook-xsl-doc-pdf",
    "gnuplot-doc", "libtasn1-doc", "python-reportlab-doc", "r-doc-pdf", "ruby-prawn-doc",
    "texlive-latex-base-doc", "ubuntu-packaging-guide-pdf",
]

# Held out of training, to choose settings on. A mix of the producers below.
VAL = [
    "debian-faq", "gnu-standards", "python-simpy-doc", "nauty-doc", "groff", "r-cran-xtable",
    "krb5-doc", "libidn2-doc",
]

# Training packages, chosen for the spread of document producers and fonts: texinfo manuals,
# LaTeX papers and books, Sphinx manuals, DocBook (dblatex/FOP), groff, R vignettes, beamer,
# reference cards, some in French, German or Spanish.
TRAIN = [
    # texinfo
    "bash-doc", "autoconf-doc", "texinfo", "zsh-doc", "libmpfr-doc", "sbcl-doc", "libgcrypt20-doc",
    "nettle-dev", "cvs", "stow", "clisp-doc", "shishi-doc", "ragel", "gprolog-doc", "mit-scheme-doc",
    # LaTeX
    "libflint-doc", "glpk-doc", "pari-gp2c", "normaliz-doc", "libcdd-doc", "sollya-doc",
    "why3-doc-pdf", "yacas-doc", "ngspice-doc", "circuit-macros", "xfig-doc", "geomview",
    "gretl-doc", "jags", "mrbayes-doc", "raster3d-doc", "prover9-doc", "pmw-doc", "libtommath-doc",
    "coccinelle-doc", "bibtool", "latex2rtf-doc", "tcm-doc", "elk-lapw", "toulbar2-doc",
    "primesieve-doc", "libqhull-doc", "feynmf",
    # Sphinx
    "python-cycler-doc", "python-lark-doc", "python-babel-doc", "python-cherrypy3-doc",
    "python-mpi4py-doc", "python-nbsphinx-doc", "snakemake-doc", "swupdate-doc", "scons-doc",
    "python-tables-doc", "python-pint-doc", "python-fluids-doc",
    # DocBook, publican, other XML toolchains
    "maint-guide", "maint-guide-fr", "maint-guide-de", "maint-guide-es", "debian-policy",
    "live-manual-pdf", "debian-history", "debian-refcard", "dblatex-doc", "publican",
    "kannel-docs", "nut-doc", "openafs-doc", "claws-mail-doc", "systemtap-doc", "slurm-wlm-doc",
    # R vignettes, beamer, misc
    "r-cran-partykit", "r-cran-vegan", "r-mathlib", "r-bioc-qvalue", "packaging-tutorial",
    "muttprint-manual", "swig4.0-doc", "graphviz-doc", "lifelines-doc",
]

SPLITS = {"train": TRAIN, "val": VAL, "test": TEST}

# Resolutions a page is rendered at for training (docTR reads PDFs at 144 dpi).
TRAIN_DPIS = [100, 120, 144, 144, 170, 200]
EVAL_DPI = 144

# A pixel is ink when some channel differs from the page's background by more than this.
INK_DELTA = 48
# Of the ground truth's format and rules; pages made under another are made again.
VERSION = 2


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def fetch(pkg: str, cache: Path) -> list[Path]:
    """The PDFs under usr/share/doc of a package, downloaded and unpacked into the cache."""
    root = cache / "pkgs" / pkg
    done = root / ".unpacked"
    if not done.exists():
        debs = cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        found = list(debs.glob(f"{pkg}_*.deb"))
        if not found:
            sh(["apt-get", "download", pkg], cwd=debs)
            found = list(debs.glob(f"{pkg}_*.deb"))
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        sh(["dpkg-deb", "-x", str(found[0]), str(root)])
        for gz in (root / "usr/share/doc").rglob("*.pdf.gz"):
            if gz.is_symlink() or not gz.is_file():
                continue
            with gzip.open(gz) as src, open(gz.with_suffix(""), "wb") as dst:
                shutil.copyfileobj(src, dst)
            gz.unlink()
        done.touch()
    pdfs = []
    for p in sorted((root / "usr/share/doc").rglob("*.pdf")):
        # Some packages keep their manuals elsewhere and link them from usr/share/doc.
        while p.is_symlink():
            target = os.readlink(p)
            p = root / target.lstrip("/") if target.startswith("/") else p.parent / target
        if p.is_file() and p.resolve() not in pdfs:
            pdfs.append(p.resolve())
    return pdfs


def page_count(pdf: Path) -> int:
    try:
        out = sh(["pdfinfo", str(pdf)]).stdout.decode("utf-8", "replace")
    except subprocess.CalledProcessError:
        return 0
    m = re.search(r"^Pages:\s+(\d+)", out, re.M)
    return int(m.group(1)) if m else 0


def render(pdf: Path, page: int, dpi: int) -> Image.Image:
    out = sh(["pdftoppm", "-r", str(dpi), "-f", str(page), "-l", str(page), "-png", "-singlefile", str(pdf)],
             timeout=120).stdout
    from io import BytesIO
    return Image.open(BytesIO(out)).convert("RGB")


def text_layer(pdf: Path, page: int) -> tuple[float, float, list[tuple[str, float, float, float, float]]]:
    """(page width, page height, words) in PDF points, as poppler's text layer gives them."""
    out = sh(["pdftotext", "-f", str(page), "-l", str(page), "-bbox-layout", str(pdf), "-"], timeout=120).stdout
    text = out.decode("utf-8", "replace")
    # The XHTML has a DOCTYPE ElementTree cannot resolve; the elements are all that matter.
    text = re.sub(r"<!DOCTYPE[^>]*>", "", text)
    tree = ElementTree.fromstring(text)
    ns = {"x": "http://www.w3.org/1999/xhtml"}
    pg = tree.find(".//x:page", ns)
    if pg is None:
        return 0.0, 0.0, []
    words = []
    for w in pg.iter("{http://www.w3.org/1999/xhtml}word"):
        words.append((w.text or "", float(w.get("xMin")), float(w.get("yMin")), float(w.get("xMax")), float(w.get("yMax"))))
    return float(pg.get("width")), float(pg.get("height")), words


def normalise(word: str) -> str:
    """What a reader sees: ligatures and compatibility forms folded (NFKC)."""
    return unicodedata.normalize("NFKC", word)


def garbled(word: str) -> bool:
    """Control characters, private-use glyph codes and replacement characters mean the text layer
    does not say what is drawn."""
    return any(unicodedata.category(c) in ("Cc", "Co", "Cs", "Cn") or c == "\ufffd" for c in word)


def ink_mask(img: np.ndarray) -> np.ndarray:
    background = np.median(img.reshape(-1, 3), axis=0)
    return (np.abs(img.astype(np.int16) - background.astype(np.int16)).max(axis=2) > INK_DELTA)


def vertical_limits(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows each word's ink is looked for in: its font box, less the part it shares with the font
    box of a word on the line above or below. Fonts' ascent and descent reach into neighbouring
    lines in tightly set text; the shared band is split at its middle."""
    x0, y0, x1, y1 = boxes.T
    cy, h = (y0 + y1) / 2, y1 - y0
    overlap_x = np.minimum(x1[:, None], x1[None, :]) > np.maximum(x0[:, None], x0[None, :])
    overlap_y = np.minimum(y1[:, None], y1[None, :]) > np.maximum(y0[:, None], y0[None, :])
    # Another line, not a word of this one (whose boxes may touch where kerning overlaps them).
    apart = np.abs(cy[None, :] - cy[:, None]) > 0.25 * h[:, None]
    near = overlap_x & overlap_y & apart
    above = near & (cy[None, :] < cy[:, None])
    below = near & (cy[None, :] > cy[:, None])
    top = np.maximum(y0, np.where(above, (y0[:, None] + y1[None, :]) / 2, -np.inf).max(axis=1))
    bottom = np.minimum(y1, np.where(below, (y1[:, None] + y0[None, :]) / 2, np.inf).min(axis=1))
    return top, bottom


def check_page(img: Image.Image, layer, dpi: int):
    """Words with tight pixel boxes, or the reason the page cannot be ground truth."""
    pw, ph, raw = layer
    if not raw:
        return None, "no text layer"
    scale = dpi / 72.0
    if abs(pw * scale - img.width) > 2 or abs(ph * scale - img.height) > 2:
        return None, "text layer and image sizes differ"
    arr = np.asarray(img)
    ink = ink_mask(arr)
    covered = np.zeros_like(ink)
    texts, boxes = [], []
    for text, x0, y0, x1, y1 in raw:
        text = normalise(text)
        if not text.strip():
            continue
        if garbled(text):
            return None, "garbled text layer"
        texts.append(text)
        boxes.append((x0 * scale, y0 * scale, x1 * scale, y1 * scale))
    if not boxes:
        return None, "no text layer"
    top, bottom = vertical_limits(np.array(boxes, dtype=np.float64))
    words, inkless = [], 0
    for text, (x0, y0, x1, y1), lo, hi in zip(texts, boxes, top, bottom):
        a = max(int(np.floor(x0)), 0), max(int(np.floor(lo)), 0)
        b = min(int(np.ceil(x1)), img.width), min(int(np.ceil(hi)), img.height)
        # A margin around the font's box counts as covered: antialiasing and glyph overhangs.
        covered[max(int(y0) - 2, 0):int(np.ceil(y1)) + 2, max(a[0] - 2, 0):b[0] + 2] = True
        if b[0] <= a[0] or b[1] <= a[1]:
            inkless += 1
            continue
        sub = ink[a[1]:b[1], a[0]:b[0]]
        if sub.sum() < 3:
            inkless += 1
            continue
        rows, cols = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
        box = [a[0] + int(cols[0]), a[1] + int(rows[0]), a[0] + int(cols[-1]) + 1, a[1] + int(rows[-1]) + 1]
        # `size`: the font box's height, which sizes a detector's box where the ink is short ("=").
        words.append({"text": text, "box": box, "size": round(y1 - y0, 1)})
    if len(words) < 15:
        return None, "fewer than 15 words"
    if inkless > 0.03 * (len(words) + inkless):
        return None, "words without ink (hidden or clipped text)"
    total = int(ink.sum())
    outside = int((ink & ~covered).sum())
    # Ink that no word explains: figures, or text drawn as paths or images, which would be
    # unlabelled text to a detector and unscored text to an evaluation.
    if total and outside > 0.25 * total:
        return None, "ink outside the text layer's words"
    return words, None


def scan_like(img: Image.Image, rng: random.Random) -> Image.Image:
    """A copy that looks printed and scanned: turned 1-3 degrees, tinted paper under uneven light,
    slightly blurred and lower in contrast, with sensor noise; JPEG at quality ~50 is left to
    the caller's encoder."""
    from PIL import ImageFilter
    angle = rng.uniform(1.0, 3.0) * rng.choice((-1, 1))
    img = img.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9)))
    arr = np.asarray(img).astype(np.float32) / 255.0
    h, w = arr.shape[:2]
    contrast = rng.uniform(0.75, 0.95)
    arr = 1.0 - (1.0 - arr) * contrast
    tint = np.array([rng.uniform(0.88, 1.0), rng.uniform(0.86, 0.98), rng.uniform(0.78, 0.95)], np.float32)
    # Light falls off from a random point: up to a quarter darker at the far corner.
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.sqrt(((yy - cy) / h) ** 2 + ((xx - cx) / w) ** 2) / np.sqrt(2)
    light = 1.0 - rng.uniform(0.1, 0.25) * dist
    arr = arr * tint[None, None, :] * light[:, :, None]
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(0.02, 0.04), arr.shape[:2])
    arr = arr + noise[:, :, None].astype(np.float32)
    return Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))


def build_page(job):
    pdf, page, dpi, out, name = job
    done, png = out / f"{name}.json", out / f"{name}.png"
    if done.exists() and png.exists():
        meta = json.loads(done.read_text())
        if meta["dpi"] == dpi and meta.get("version") == VERSION:
            return name, len(meta["words"]), None
    try:
        layer = text_layer(pdf, page)
        # A page rendered before (same name, so the same seeded dpi) is read back.
        img = Image.open(png).convert("RGB") if png.exists() and done.exists() else render(pdf, page, dpi)
    except (subprocess.SubprocessError, ElementTree.ParseError, OSError) as e:
        return name, None, f"unreadable: {type(e).__name__}"
    words, why = check_page(img, layer, dpi)
    if words is None:
        return name, None, why
    img.save(out / f"{name}.png", optimize=False, compress_level=1)
    meta = {"version": VERSION, "words": words, "dpi": dpi, "package": job[4].split("--")[0], "pdf": pdf.name, "page": page,
            "width": img.width, "height": img.height}
    (out / f"{name}.json").write_text(json.dumps(meta, ensure_ascii=False))
    return name, len(words), None


def build_package(job):
    """A package's candidates in order until `wanted` pages pass the checks."""
    candidates, wanted = job
    results, kept = [], 0
    for c in candidates:
        if kept == wanted:
            break
        results.append(build_page(c))
        kept += results[-1][1] is not None
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=SPLITS, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pages-per-package", type=int, default=40,
                    help="pages kept per package (fewer where too few pass the checks)")
    ap.add_argument("--packages", help="comma-separated subset of the split's packages")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    packages = SPLITS[args.split]
    if args.packages:
        wanted = args.packages.split(",")
        unknown = set(wanted) - set(packages)
        if unknown:
            sys.exit(f"not in split {args.split}: {', '.join(sorted(unknown))}")
        packages = wanted
    out = args.out / args.split
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for pkg in packages:
        rng = random.Random(f"{args.seed}/{pkg}")
        try:
            pdfs = fetch(pkg, args.out)
        except subprocess.CalledProcessError as e:
            print(f"{pkg}: not fetched ({e.stderr.decode(errors='replace').strip()[:200]})", file=sys.stderr)
            continue
        pages = [(pdf, n) for pdf in pdfs for n in range(1, page_count(pdf) + 1)]
        # Up to three candidates per wanted page, in a seeded order; the first that pass the checks
        # are kept, so every package gives its share however many of its pages fail them.
        candidates = []
        for pdf, n in rng.sample(pages, min(3 * args.pages_per_package, len(pages))):
            dpi = EVAL_DPI if args.split != "train" else rng.choice(TRAIN_DPIS)
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", pdf.stem)
            candidates.append((pdf, n, dpi, out, f"{pkg}--{stem}--p{n:04d}"))
        jobs.append((candidates, args.pages_per_package))
    kept, reasons = {}, {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for results in pool.map(build_package, jobs):
            for name, n, why in results:
                if n is None:
                    reasons[why] = reasons.get(why, 0) + 1
                else:
                    kept[name] = n
    index = sorted(kept)
    (out / "index.json").write_text(json.dumps({"split": args.split, "seed": args.seed, "pages": index}, indent=1))
    print(f"{args.split}: {len(index)} pages kept, {sum(kept.values())} words; rejected: {reasons}")


if __name__ == "__main__":
    main()
