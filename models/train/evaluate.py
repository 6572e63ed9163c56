"""Held-out check of the weights train.py made, with docTR's own Python `ocr_predictor`: synthetic
pages from another seed, one font per page (half of them fonts never seen in training) and one
size per page, scored by word-multiset F1.

    python models/train/evaluate.py --weights DIR [--pages 10] [--seed 20250601] [--json FILE]

Page types: straight pages read with assume_straight_pages=True (issue 6: F1 >= 0.90), and pages
turned 90/180/270 degrees or skewed by up to ±5 degrees read with assume_straight_pages=False
(F1 >= 0.80). --straighten adds the same turned pages read with straighten_pages=True, which is
where docTR uses the page orientation classifier. The classifiers are also scored on their own,
the crop classifier both on rendered word crops and on the crops the detector cuts from turned pages.
"""

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent / "tests" / "fixtures"))

import doctr_onnx  # noqa: E402
import synth  # noqa: E402
import train  # noqa: E402

# (page type, turn in degrees counter-clockwise or "skew", assume_straight_pages, straighten_pages,
# crop classifier on)
MODES = [
    ("straight", 0, True, False, False),
    ("rot90", 90, False, False, True),
    ("rot180", 180, False, False, True),
    ("rot270", 270, False, False, True),
    ("skew", "skew", False, False, True),
]
STRAIGHTEN_MODES = [(f"{n}+straighten", t, False, True, True) for n, t, _, _, _ in MODES[1:]]
# docTR's setting for documents whose pages may be turned but whose words run along their lines:
# the page classifier and the line angle straighten the page, crops are read as cut.
UPRIGHT_CROP_MODES = [(f"{n}+straighten-crop_cls", t, False, True, False) for n, t, _, _, _ in MODES[1:]]
TARGET = {True: 0.90, False: 0.80}


def log(msg):
    print(msg, flush=True)


def load(task, weights, suffix, det_size=None):
    """A trained docTR model object from its train.py checkpoint; cfg's input size set to the one
    it was trained for, so that docTR's predictors resize pages as in training."""
    name = train.TASKS[task].arch + suffix
    model = train.build(task)
    model.load_state_dict(torch.load(Path(weights) / f"{name}.pt", map_location="cpu"))
    record = Path(weights) / f"{name}.json"
    if train.TASKS[task].kind == "detection":
        size = det_size or (json.loads(record.read_text())["det_size"] if record.is_file() else 1024)
        model.cfg = {**model.cfg, "input_shape": (3, size, size)}
        doctr_onnx.set_postprocess(model, train.DET_POSTPROCESS)
    return model.eval()


def load_onnx(models_dir, suffix, threads):
    """The cards' bundled ONNX files in docTR's model objects (tests/fixtures/doctr_onnx.py)."""
    import tomllib

    def card(task):
        return tomllib.loads((models_dir / f"{train.TASKS[task].arch}{suffix}.toml").read_text())

    def path(task):
        return models_dir / card(task)["source"]["bundled"]

    return {
        "det": doctr_onnx.detection(train.TASKS["det"].arch, path("det"), threads,
                                    postprocess=card("det")["postprocess"]),
        "reco": doctr_onnx.recognition(train.TASKS["reco"].arch, path("reco"), threads),
        "crop_orientation": doctr_onnx.classifier(train.TASKS["crop_orientation"].arch, path("crop_orientation"),
                                                  threads),
        "page_orientation": doctr_onnx.classifier(train.TASKS["page_orientation"].arch, path("page_orientation"),
                                                  threads),
    }


def dump_case(dump, type_name, i, pg, page, straight, straighten, crop_cls):
    """A page as PNG and docTR's reading of it, in tests/fixtures/make_predictions.py's format."""
    from PIL import Image

    file = f"{type_name}_{i}.png"
    Image.fromarray(pg["image"]).save(dump / file)
    mode = "straight" if straight else ("straighten" if straighten else "rotated")
    options = {"assume_straight_pages": straight}
    if straighten:
        options.update(straighten_pages=True, detect_orientation=True)
    if not straight and not crop_cls:
        options.update(disable_crop_orientation=True)
        mode += "+upright_crops"
    words = [{"value": w.value, "confidence": float(w.confidence),
              "geometry": np.asarray(w.geometry, dtype=np.float64).tolist()}
             for b in page.blocks for ln in b.lines for w in ln.words]
    return {"page": f"{dump.name}/{file}", "type": type_name, "mode": mode, "options": options,
            "truth": pg["words"], "dimensions": list(page.dimensions), "orientation": page.orientation,
            "words": words}


def predictor(models, assume_straight, straighten, crop_cls):
    """docTR's ocr_predictor holding our models (tests/fixtures/doctr_onnx.py; it works the same
    for the PyTorch checkpoints)."""
    return doctr_onnx.ocr_predictor(models, assume_straight_pages=assume_straight, straighten_pages=straighten,
                                    detect_orientation=straighten, disable_crop_orientation=not crop_cls)


def f1(pred, truth):
    tp = sum((Counter(pred) & Counter(truth)).values())
    precision = tp / len(pred) if pred else 0.0
    recall = tp / len(truth) if truth else 0.0
    return tp, (2 * precision * recall / (precision + recall) if tp else 0.0)


def make_pages(seed, n, turn):
    """`n` held-out pages, the same ones for every page type of a seed; then turned."""
    rng = random.Random(f"{seed}/eval")
    words = synth.Words(rng, synth.EVAL_MIX)
    fonts = synth.fonts(synth.HELD_OUT_FONTS) or []
    seen = synth.fonts(synth.TRAIN_FONTS)
    pages = []
    for i in range(n):
        pool = fonts if fonts and i % 2 == 0 else seen
        img, polys, texts, font, size = synth.eval_page(rng, words, pool)
        # Its own generator, so that every page type turns the same pages.
        angle = turn
        if turn == "skew":
            skew = random.Random(f"{seed}/skew/{i}")
            angle = skew.choice([-1, 1]) * skew.uniform(2, 5)
        img, _ = synth.rotate(img, polys, angle, (255, 255, 255))
        arr = synth.degrade(rng, img, strength=0.6)
        pages.append({"image": arr, "words": texts, "font": Path(font).name, "size": size,
                      "angle": round(angle, 2), "held_out_font": pool is fonts})
    return pages


def detected_crops(det, page, polys):
    """The crops docTR's ocr_predictor cuts from `page` with rotated boxes (the detector's boxes,
    `extract_rcrops`), each with the orientation class of the true word under its centre: the
    crop classifier's inputs as it meets them at inference. `polys` are the true (N, 4, 2)
    polygons, clockwise from the word's own top-left; crops over no word or over two are left out."""
    import cv2
    from doctr.utils.geometry import detach_scores, extract_rcrops

    (boxes,), _ = detach_scores([next(iter(det([page])[0].values()))])
    if not len(boxes):
        return []
    h, w = page.shape[:2]
    corners = boxes[:, :4] * np.array([w, h], dtype=np.float32)
    out = []
    for crop, box in zip(extract_rcrops(page, boxes[:, :4]), corners):
        if min(crop.shape[:2]) < 2:
            continue
        c = (float(box[:, 0].mean()), float(box[:, 1].mean()))
        under = [p for p in polys if cv2.pointPolygonTest(np.asarray(p, np.float32), c, False) >= 0]
        if len(under) != 1:
            continue
        # The word's reading direction in the crop's frame (x along box[0]->box[1], y along box[1]->box[2]).
        t = under[0][1] - under[0][0]
        ax, ay = box[1] - box[0], box[2] - box[1]
        x, y = t @ ax / np.linalg.norm(ax), t @ ay / np.linalg.norm(ay)
        # Reading right, up, left, down: classes 0, 1 (np.rot90 once), 2, 3 (synth.turn).
        k = (0 if x > 0 else 2) if abs(x) >= abs(y) else (1 if y < 0 else 3)
        out.append((crop, k))
    return out


@torch.no_grad()
def classifier_accuracy(models, seed, n):
    """The orientation classifiers alone, through docTR's predictors, on held-out crops and pages."""
    from doctr.models import crop_orientation_predictor, detection_predictor, page_orientation_predictor

    rng = random.Random(f"{seed}/classifiers")
    words = synth.Words(rng, synth.EVAL_MIX)
    fonts = synth.fonts(synth.HELD_OUT_FONTS) or synth.fonts(synth.TRAIN_FONTS)
    crops, crop_k = [], []
    for _ in range(n * 16):
        w = words()
        font = rng.choice(fonts)
        if len(w) < 2 or not synth.renderable(font, w):
            continue
        k = rng.randrange(4)
        crops.append(synth.turn(synth.word_crop(rng, w, font, rng.randint(16, 48)), k))
        crop_k.append(k)
    got = crop_orientation_predictor(models["crop_orientation"])(crops)[0]
    pages, page_k = [], []
    for i in range(n):
        img, _, _, _, _ = synth.eval_page(rng, words, fonts)
        k = i % 4
        pages.append(synth.turn(synth.degrade(rng, img, 0.6), k))
        page_k.append(k)
    got_pages = page_orientation_predictor(models["page_orientation"])(pages)[0]
    # Crops as the rotated-box pipeline cuts them: the detector's boxes on pages turned 0/90/180/270
    # degrees and skewed by up to 5, labelled by the true word under each.
    det = detection_predictor(models["det"], pretrained=False, assume_straight_pages=False)
    cut = []
    for i in range(n):
        img, polys, _, _, _ = synth.eval_page(rng, words, fonts)
        img, polys = synth.rotate(img, polys, 90 * (i % 4) + rng.uniform(-5, 5), (255, 255, 255))
        cut += detected_crops(det, synth.degrade(rng, img, 0.6), polys)
    got_cut = crop_orientation_predictor(models["crop_orientation"])([c for c, _ in cut])[0]
    return {
        "crop_orientation_accuracy": float(np.mean(np.array(got) == np.array(crop_k))),
        "crop_samples": len(crops),
        "detected_crop_orientation_accuracy": float(np.mean(np.array(got_cut) == np.array([k for _, k in cut]))),
        "detected_crop_samples": len(cut),
        "page_orientation_accuracy": float(np.mean(np.array(got_pages) == np.array(page_k))),
        "page_samples": len(pages),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="train.py's --out directory (PyTorch checkpoints)")
    src.add_argument("--onnx", help="a models/ directory: the cards' bundled ONNX files, served by ONNX Runtime")
    ap.add_argument("--dump", help="also write the pages and docTR's words here, for Kiln's comparison "
                                   "(KILN_PREDICTIONS=DIR cargo test --release --test doctr_predictor)")
    ap.add_argument("--suffix", default="_synth")
    ap.add_argument("--pages", type=int, default=10, help="pages per page type")
    ap.add_argument("--seed", type=int, default=20250601)
    ap.add_argument("--det-size", type=int, help="detector input size (default: the one trained for)")
    ap.add_argument("--straighten", action="store_true", help="also run straighten_pages=True")
    ap.add_argument("--upright-crops", action="store_true",
                    help="also run straighten_pages=True with disable_crop_orientation=True")
    ap.add_argument("--types", help="comma-separated page types to run (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="per-page results (default: WEIGHTS/eval.json)")
    ap.add_argument("--no-font-install", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    if not args.no_font_install:
        synth.ensure_fonts(log)
    if args.onnx:
        models = load_onnx(Path(args.onnx), args.suffix, args.threads)
    else:
        models = {t: load(t, args.weights, args.suffix, args.det_size) for t in train.TASKS}
    dump = Path(args.dump) if args.dump else None
    dumped = []
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
    modes = MODES + (STRAIGHTEN_MODES if args.straighten else []) + (UPRIGHT_CROP_MODES if args.upright_crops else [])
    if args.types:
        keep = set(args.types.split(","))
        modes = [m for m in modes if m[0] in keep]
    held = synth.fonts(synth.HELD_OUT_FONTS)
    log(f"evaluate: seed {args.seed}, {args.pages} pages per type, held-out fonts "
        f"{[Path(f).name for f in held]}")

    results, summary = [], {}
    for name, turn, straight, straighten, crop_cls in modes:
        ocr = predictor(models, straight, straighten, crop_cls)
        tp = n_pred = n_true = 0
        scores = []
        start = time.perf_counter()
        for i, pg in enumerate(make_pages(args.seed, args.pages, turn)):
            doc = ocr([pg["image"]])
            pred = [w.value for b in doc.pages[0].blocks for ln in b.lines for w in ln.words]
            if dump:
                dumped.append(dump_case(dump, name, i, pg, doc.pages[0], straight, straighten, crop_cls))
            t, score = f1(pred, pg["words"])
            tp, n_pred, n_true = tp + t, n_pred + len(pred), n_true + len(pg["words"])
            scores.append(score)
            missed = list((Counter(pg["words"]) - Counter(pred)).elements())
            extra = list((Counter(pred) - Counter(pg["words"])).elements())
            results.append({"type": name, "page": i, "assume_straight_pages": straight, "straighten_pages": straighten,
                            "crop_orientation": crop_cls,
                            "font": pg["font"], "held_out_font": pg["held_out_font"], "size": pg["size"],
                            "angle": pg["angle"], "words": len(pg["words"]), "predicted": len(pred), "tp": t,
                            "f1": round(score, 4), "missed": missed[:30], "extra": extra[:30]})
        micro = 2 * tp / (n_pred + n_true) if n_pred + n_true else 0.0
        ok = micro >= TARGET[straight]
        summary[name] = {"f1": round(micro, 4), "mean_page_f1": round(float(np.mean(scores)), 4),
                         "target": TARGET[straight], "pass": ok, "assume_straight_pages": straight,
                         "straighten_pages": straighten, "crop_orientation": crop_cls, "seconds": round(time.perf_counter() - start, 1)}
        log(f"{name:>20}: F1 {micro:.3f} (pages {min(scores):.2f}..{max(scores):.2f}), target "
            f"{TARGET[straight]:.2f} {'pass' if ok else 'FAIL'}  [{time.perf_counter() - start:.0f}s]")
    classifiers = classifier_accuracy(models, args.seed, max(8, args.pages))
    log(f"{'classifiers':>20}: crop orientation {classifiers['crop_orientation_accuracy']:.3f} "
        f"on {classifiers['crop_samples']} crops, {classifiers['detected_crop_orientation_accuracy']:.3f} on "
        f"{classifiers['detected_crop_samples']} crops cut by the detector, page orientation "
        f"{classifiers['page_orientation_accuracy']:.3f} on {classifiers['page_samples']} pages")
    if dump:
        (dump / "index.json").write_text(json.dumps({"seed": args.seed, "cases": dumped}, indent=1))
        log(f"evaluate: wrote {dump / 'index.json'}")
    out = Path(args.json or Path(args.weights or ".") / "eval.json")
    out.write_text(json.dumps({"seed": args.seed, "pages_per_type": args.pages, "summary": summary,
                               "classifiers": classifiers, "pages": results}, indent=1, ensure_ascii=False))
    log(f"evaluate: wrote {out}")


if __name__ == "__main__":
    main()
