"""`cargo xtask bench --e2e`'s Python side: docTR 1.1.0's own `ocr_predictor` reading pages, with
Kiln's default models served by ONNX Runtime from the same ONNX files (tests/fixtures/doctr_onnx.py).
Prints one JSON line: the time from start (imports included) to the first page's document, and
steady-state pages per second over `--runs` passes after one warm-up pass.
"""

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import doctr_onnx  # noqa: E402
from make_predictions import DEFAULTS, MODES, onnx_path, postprocess  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, help="the repository's models/ directory")
    ap.add_argument("--mode", choices=sorted(MODES), required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("pages", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models_dir = Path(args.models)
    paths = {role: onnx_path(models_dir, name)[0] for role, (_, name) in DEFAULTS.items()}
    models = {
        "det": doctr_onnx.detection(DEFAULTS["det"][0], paths["det"], args.threads,
                                    postprocess=postprocess(models_dir, DEFAULTS["det"][1])),
        "reco": doctr_onnx.recognition(DEFAULTS["reco"][0], paths["reco"], args.threads),
        "crop_orientation": doctr_onnx.classifier(DEFAULTS["crop_orientation"][0], paths["crop_orientation"],
                                                  args.threads),
        "page_orientation": doctr_onnx.classifier(DEFAULTS["page_orientation"][0], paths["page_orientation"],
                                                  args.threads),
    }
    predictor = doctr_onnx.ocr_predictor(models, **MODES[args.mode])
    pages = [np.asarray(Image.open(p).convert("RGB")) for p in args.pages]
    predictor([pages[0]])
    first = time.perf_counter() - START
    for page in pages:  # warm-up pass
        predictor([page])
    start = time.perf_counter()
    for _ in range(args.runs):
        for page in pages:
            predictor([page])
    seconds = time.perf_counter() - start
    print(json.dumps({"first_page_s": first, "pages_per_s": len(pages) * args.runs / seconds}))


if __name__ == "__main__":
    main()
