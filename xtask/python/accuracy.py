"""Reading accuracy on held-out real pages, Kiln against named peers (`cargo xtask accuracy`).

The pages are the `test` split of `models/train/corpus.py`: born-digital PDF pages from Debian
documentation packages that no model here is trained or tuned on, rendered at 144 dpi, with the
words of their text layer as ground truth. Each page is read in five variants: as rendered
(`clean`), as a scan-like copy (`scan`: turned 1-3 degrees, blurred, tinted, unevenly lit, noisy,
JPEG at quality 50), and turned 90, 180 and 270 degrees.

Score: word-multiset F1 per page, then the mean over the pages of a variant. Both sides are the
words (split on whitespace, NFKC-normalised) that hold at least one letter or digit, compared
exactly, case and punctuation kept. Seconds per page are wall time over all pages of a variant,
model loading included once per tool and variant, on this machine's cores.
"""

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models" / "train"))
import corpus  # noqa: E402
from PIL import Image  # noqa: E402

VARIANTS = ["clean", "scan", "rot90", "rot180", "rot270"]

# name → how it reads a list of pages.
KILN_CONFIGS = {
    "kiln": [],
    "kiln --rotated": ["--rotated"],
    "kiln --rotated --straighten": ["--rotated", "--straighten"],
    "kiln --rotated --straighten --disable-crop-orientation": ["--rotated", "--straighten", "--disable-crop-orientation"],
    "kiln --det ppocr-v4-det --reco ppocr-v4-rec": ["--det", "ppocr-v4-det", "--reco", "ppocr-v4-rec"],
    "kiln --det ppocr-v4-det --reco ppocr-v4-rec --rotated": ["--det", "ppocr-v4-det", "--reco", "ppocr-v4-rec", "--rotated"],
}
PEERS = ["tesseract", "rapidocr"]
TOOLS = PEERS + list(KILN_CONFIGS)


def words(text: str) -> list[str]:
    out = []
    for w in unicodedata.normalize("NFKC", text).split():
        if any(c.isalnum() for c in w):
            out.append(w)
    return out


def f1(pred: list[str], truth: list[str]) -> float:
    if not pred and not truth:
        return 1.0
    common = sum((Counter(pred) & Counter(truth)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(truth)
    return 2 * p * r / (p + r)


def make_variants(pages: Path, names: list[str], out: Path, seed: int) -> dict[str, list[Path]]:
    files = {v: [] for v in VARIANTS}
    for v in VARIANTS:
        (out / v).mkdir(parents=True, exist_ok=True)
    for name in names:
        src = None
        for v in VARIANTS:
            ext = ".jpg" if v == "scan" else ".png"
            path = out / v / f"{name}{ext}"
            files[v].append(path)
            if path.exists():
                continue
            src = src or Image.open(pages / f"{name}.png").convert("RGB")
            if v == "clean":
                src.save(path)
            elif v == "scan":
                corpus.scan_like(src, random.Random(f"{seed}/{name}")).save(path, quality=50)
            else:
                # rotN: the page turned N degrees clockwise.
                src.rotate(-int(v[3:]), expand=True).save(path)
    return files


def read_kiln(kiln: Path, flags: list[str], files: list[Path], work: Path) -> list[str]:
    """One `kiln ocr` process over all pages; if it fails, one per page, a failed page reading as
    no text (and said on stderr)."""
    try:
        return kiln_pages(kiln, flags, files, work)
    except subprocess.CalledProcessError:
        texts = []
        for f in files:
            try:
                texts += kiln_pages(kiln, flags, [f], work)
            except subprocess.CalledProcessError as e:
                print(f"kiln {' '.join(flags)} failed on {f}: {e.stderr.decode(errors='replace').strip()}",
                      file=sys.stderr)
                texts.append("")
        return texts


def kiln_pages(kiln: Path, flags: list[str], files: list[Path], work: Path) -> list[str]:
    out = work / "kiln.json"
    subprocess.run([str(kiln), "ocr", *map(str, files), "--json", str(out), *flags], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    doc = json.loads(out.read_text())
    texts = []
    for page in doc["pages"]:
        lines = [" ".join(w["value"] for w in line["words"]) for block in page["blocks"] for line in block["lines"]]
        texts.append("\n".join(lines))
    if len(texts) != len(files):
        raise RuntimeError(f"kiln returned {len(texts)} pages for {len(files)} files")
    return texts


def read_tesseract(files: list[Path]) -> list[str]:
    # --psm 1: page segmentation with orientation and script detection (reads turned pages).
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    texts = []
    for f in files:
        r = subprocess.run(["tesseract", str(f), "stdout", "--psm", "1", "-l", "eng"], env=env, capture_output=True)
        if r.returncode != 0:
            print(f"tesseract failed on {f}: {r.stderr.decode(errors='replace').strip()}", file=sys.stderr)
        texts.append(r.stdout.decode("utf-8", "replace") if r.returncode == 0 else "")
    return texts


def read_rapidocr(files: list[Path]) -> list[str]:
    from rapidocr_onnxruntime import RapidOCR
    engine = RapidOCR()
    texts = []
    for f in files:
        result, _ = engine(str(f))
        texts.append("\n".join(r[1] for r in (result or [])))
    return texts


def machine() -> str:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu or platform.processor()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def tool_version(tool: str) -> str:
    if tool == "tesseract":
        out = subprocess.run(["tesseract", "--version"], capture_output=True).stdout.decode()
        return out.splitlines()[0] if out else "tesseract"
    if tool == "rapidocr":
        from importlib.metadata import version
        return f"rapidocr-onnxruntime {version('rapidocr-onnxruntime')}, onnxruntime {version('onnxruntime')}"
    return "this commit"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=Path, required=True, help="the corpus's test (or val) split")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--kiln", type=Path, required=True)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--command", default="cargo xtask accuracy")
    args = ap.parse_args()

    tools = args.tools.split(",")
    variants = args.variants.split(",")
    for t in tools:
        if t not in TOOLS:
            sys.exit(f"unknown tool '{t}'; known: {', '.join(TOOLS)}")
    names = json.loads((args.pages / "index.json").read_text())["pages"]
    truth = {n: words(" ".join(w["text"] for w in json.loads((args.pages / f"{n}.json").read_text())["words"]))
             for n in names}
    files = make_variants(args.pages, names, args.work / "pages", args.seed)
    results = {}
    for tool in tools:
        results[tool] = {}
        for v in variants:
            t0 = time.perf_counter()
            if tool == "tesseract":
                texts = read_tesseract(files[v])
            elif tool == "rapidocr":
                texts = read_rapidocr(files[v])
            else:
                texts = read_kiln(args.kiln, KILN_CONFIGS[tool], files[v], args.work)
            secs = (time.perf_counter() - t0) / len(names)
            scores = [f1(words(t), truth[n]) for t, n in zip(texts, names)]
            results[tool][v] = {"f1": sum(scores) / len(scores), "seconds_per_page": secs,
                                "pages": dict(zip(names, scores))}
            print(f"{tool:60s} {v:7s} F1 {results[tool][v]['f1']:.3f}  {secs:.2f} s/page", flush=True)

    packages = sorted({n.split("--")[0] for n in names})
    split = json.loads((args.pages / "index.json").read_text())["split"]
    report = {"machine": machine(), "command": args.command, "split": split, "pages": len(names), "packages": packages,
              "versions": {t: tool_version(t) for t in tools}, "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(report, variants))


def markdown(report, variants) -> str:
    lines = [
        "# Reading accuracy on held-out real pages",
        "",
        f"Generated by `{report['command']}` on {report['machine']}.",
        "",
        f"{report['pages']} pages of born-digital PDF manuals from Debian documentation packages that no",
        "model here was trained or tuned on (" + ", ".join(report["packages"]) + "),"
        if report["split"] == "test" else
        f"{report['pages']} validation pages of born-digital PDF manuals from Debian documentation packages, "
        "the pages models and settings are tuned on (" + ", ".join(report["packages"]) + "),",
        "rendered at 144 dpi; ground truth is each page's text layer (`models/train/corpus.py`).",
        "Variants: as rendered (clean); a scan-like copy (turned 1-3°, blurred, tinted paper under uneven",
        "light, noise, JPEG quality 50); turned 90°, 180° and 270° clockwise.",
        "",
        "F1: word-multiset F1 per page, mean over pages. Both sides are the whitespace-separated words",
        "holding a letter or digit, NFKC-normalised, compared exactly (case and punctuation kept).",
        "s/page: wall time over all pages of a variant (model loading included once), mean over the",
        "variants.",
        "",
        "| tool | " + " | ".join(variants) + " | s/page |",
        "|---|" + "---|" * (len(variants) + 1),
    ]
    for tool, per in report["results"].items():
        cells = [f"{per[v]['f1']:.3f}" if v in per else "" for v in variants]
        secs = sum(per[v]["seconds_per_page"] for v in per) / max(len(per), 1)
        lines.append(f"| `{tool}` | " + " | ".join(cells) + f" | {secs:.1f} |")
    lines += ["", "Versions: " + "; ".join(f"{t}: {v}" for t, v in report["versions"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
