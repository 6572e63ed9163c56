"""Trains Kiln's docTR models on synthetic text (synth.py), on the CPU, with docTR's own model
classes and losses (detection and recognition from random initialisation, the orientation
classifiers from the recogniser's backbone, so `--task reco` comes first or `--backbone` names
it), then exports each to ONNX exactly as tests/fixtures/make_fixtures.py does and writes its
model card.

    python models/train/train.py --task all --out DIR            # the ~2 h run (README.md)
    python models/train/train.py --task reco --minutes 1 --out DIR

Data is rendered on the fly, so a time budget (--minutes), not a dataset size, bounds a run: after a
few calibration steps the run fixes its step count, and that count goes into the card, so that
`--steps N` with the same seed replays the same data and learning-rate schedule.

Outputs under --out: <name>.pt (state dict), <name>.json (run record), <name>.onnx, <name>.toml.
"""

import argparse
import hashlib
import json
import math
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import real  # noqa: E402
import synth  # noqa: E402


@dataclass
class Task:
    arch: str
    kind: str  # detection | recognition | crop_orientation | page_orientation
    minutes: float
    batch: int
    lr: float
    log_every: int
    init_from: str | None = None  # task whose trained backbone starts this one


# Default budgets sum to 112 min on 2 threads; export, validation and start-up take the rest of 2 h.
TASKS = {
    "det": Task("db_mobilenet_v3_large", "detection", 50, 4, 1e-3, 10),
    "reco": Task("crnn_mobilenet_v3_small", "recognition", 38, 64, 1e-3, 25),
    # From random weights the orientation classifiers learn horizontal vs vertical within 100 steps
    # and then sit at ln 2: 0 vs 180 degrees needs features that know upright glyphs (measured:
    # 59 % crop accuracy after 14 min). They start from the recogniser's MobileNetV3-small
    # backbone instead (same layers; the recogniser only has rectangular strides).
    "crop_orientation": Task("mobilenet_v3_small_crop_orientation", "crop_orientation", 14, 32, 1e-3, 20, "reco"),
    "page_orientation": Task("mobilenet_v3_small_page_orientation", "page_orientation", 10, 8, 1e-3, 20, "reco"),
}
WARMUP = 50  # steps of linear warm-up from lr/25
CALIBRATE = 20  # steps timed before the step count is fixed
BAND = 32  # canvas sides of band batches are multiples of this
# Crop orientation trains on band batches (`Data.crop_orientation_bands`, twice the images per
# second) except for CALIBRATE square steps after the first CALIBRATE, which time the square steps,
# and for this last fraction of the run, where BatchNorm's statistics and the head meet the padded
# squares the predictor feeds.
SQUARE_TAIL = 0.2
ORIENT_SIZE = {"crop_orientation": 256, "page_orientation": 512}


def log(msg):
    print(msg, flush=True)


def versions():
    import doctr
    import onnx
    import onnxruntime
    import torchvision

    return {
        "python-doctr": doctr.__version__.lstrip("v"),
        "torch": torch.__version__.split("+")[0],
        "torchvision": torchvision.__version__.split("+")[0],
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def build(task, exportable=False):
    from doctr.models import classification, detection, recognition

    t = TASKS[task]
    if t.kind == "detection":
        return detection.__dict__[t.arch](pretrained=False, pretrained_backbone=False, exportable=exportable)
    if t.kind == "recognition":
        return recognition.__dict__[t.arch](pretrained=False, pretrained_backbone=False, exportable=exportable)
    return classification.__dict__[t.arch](pretrained=False, exportable=exportable)


def input_chw(task, det_size):
    kind = TASKS[task].kind
    if kind == "detection":
        return (3, det_size, det_size)
    if kind == "recognition":
        return (3, 32, 128)
    s = ORIENT_SIZE[kind]
    return (3, s, s)


class Data:
    """Seeded batches for one task, preprocessed as docTR's predictors preprocess at inference
    (doctr.transforms.Resize with the predictor's padding, /255, the model's mean and std)."""

    def __init__(self, task, seed, cfg, det_size, det_crop, fonts, corpus=None, real_fraction=0.0, scan_crops=0.0):
        from doctr.transforms import Resize
        from torchvision.transforms import Normalize

        self.task, self.kind = task, TASKS[task].kind
        self.rng = random.Random(f"{seed}/{task}")
        self.words = synth.Words(self.rng)
        self.fonts = fonts
        self.norm = Normalize(cfg["mean"], cfg["std"])
        self.det_size, self.det_crop = det_size, det_crop
        self.pools = {}
        # Real pages (corpus.py's split) for this fraction of the samples, synthetic ones for the rest.
        self.real = real.RealPages(corpus, self.rng, scan=scan_crops) if corpus else None
        self.real_fraction = real_fraction if corpus else 0.0
        if self.real:
            # Synthetic words are half the corpus's own words, half synth's mix (numbers, random
            # strings) that teach every class of the vocabulary.
            made = self.words
            self.words = lambda: self.real.word_text() if self.rng.random() < 0.5 else made()
        if self.kind == "detection":
            self.resize = Resize((det_size, det_size), preserve_aspect_ratio=True, symmetric_pad=True)
        elif self.kind == "recognition":
            self.resize = Resize((32, 128), preserve_aspect_ratio=True, symmetric_pad=False)
        else:
            s = ORIENT_SIZE[self.kind]
            self.resize = Resize((s, s), preserve_aspect_ratio=True, symmetric_pad=True)

    def _tensor(self, arr, target=None):
        from doctr.utils import Sample

        s = self.resize(Sample(image=torch.from_numpy(arr).permute(2, 0, 1), target=target))
        return s.image, s.target

    def _finish(self, images):
        return self.norm(torch.stack(images).float().div_(255))

    def batch(self, n):
        return getattr(self, self.kind)(n)

    def parts(self, n, bands):
        """A training batch as [(x, y)]: one part, or two cut to bands (crop orientation)."""
        if bands:
            return self.crop_orientation_bands(n)
        return [self.batch(n)]

    def _use_real(self):
        return self.real is not None and self.rng.random() < self.real_fraction

    def recognition(self, n):
        n_real = sum(self._use_real() for _ in range(n))
        pairs = self.real.word_crops(n_real) if n_real else []
        pairs += [self._word_crop(min_len=0, skew_p=0.25, skew=3) for _ in range(n - n_real)]
        images, labels = [], []
        for word, crop in pairs:
            images.append(self._tensor(crop)[0])
            labels.append(word)
        return self._finish(images), labels

    def crop_orientation(self, n):
        """Each word in all four turns, side by side in the batch: the only thing that tells the
        four apart is the direction of the text, so that is what the gradient teaches."""
        images, labels = [], []
        while len(images) < n:
            crop = self._orientation_crop()
            for k in range(min(4, n - len(images))):
                images.append(self._tensor(synth.turn(crop, k))[0])
                labels.append(k)
        return self._finish(images), torch.tensor(labels)

    def crop_orientation_bands(self, n):
        """`crop_orientation`'s batch as two parts, the turns whose text runs along the rows and
        those whose text runs along the columns, each cut to the centre of the 256x256 square
        that holds its words as the predictor's resize places them, rounded up to 32 px with 8
        px of padding either side. Most words fill a third of the square; the rest is padding
        that costs compute and teaches little. Words wait in pools of the same cut until there
        are n/4 of them."""
        while True:
            crop = self._orientation_crop()
            h, w = crop.shape[:2]
            side = min(256, BAND * -(-(int(256 * min(h, w) / max(h, w)) + 16) // BAND))
            key = (side, h <= w)
            pool = self.pools.setdefault(key, [])
            pool.append(crop)
            if len(pool) == n // 4:
                break
        del self.pools[key]
        lo = (256 - side) // 2
        parts = []
        for turns in ((0, 2), (1, 3)):
            images, labels = [], []
            for crop in pool:
                for k in turns:
                    img = self._tensor(synth.turn(crop, k))[0]
                    across_rows = (k % 2 == 0) == (h <= w)
                    images.append(img[:, lo : lo + side] if across_rows else img[:, :, lo : lo + side])
                    labels.append(k)
            parts.append((self._finish(images), torch.tensor(labels)))
        return parts

    def _word_crop(self, min_len, skew_p, skew):
        """A word of at least `min_len` characters, rendered in a random training font and size,
        skewed by up to ±`skew` degrees with probability `skew_p`: (word, HWC uint8 crop)."""
        word = self.words()
        while len(word) < min_len:
            word = self.words()
        font = self.rng.choice(self.fonts)
        if not synth.renderable(font, word):
            font = synth.find_font("DejaVuSans.ttf") or font
        size = int(round(synth.log_uniform(11, 64)(self.rng)))
        angle = self.rng.uniform(-skew, skew) if self.rng.random() < skew_p else 0.0
        return word, synth.word_crop(self.rng, word, font, size, skew=angle)

    def _orientation_crop(self):
        # A lone character is often symmetric: no orientation to learn.
        while self._use_real():
            word, crop = self.real.word_crops(1, per_page=1)[0]
            if len(word) >= 2:
                return crop
        return self._word_crop(min_len=2, skew_p=0.5, skew=8)[1]

    def page_orientation(self, n):
        images, labels = [], []
        for _ in range(n):
            if self._use_real():
                img = self.real.det_page()[0]
            else:
                img, _, _ = synth.train_page(self.rng, self.words, self.fonts, ORIENT_SIZE[self.kind], turns=False,
                                             long_side=(540, 900), em=(5, 28))
            k = self.rng.randrange(4)
            arr = synth.turn(synth.degrade(self.rng, img), k)
            images.append(self._tensor(arr)[0])
            labels.append(k)
        return self._finish(images), torch.tensor(labels)

    def detection(self, n):
        """`det_crop`-square windows of pages resized to `det_size` as the predictor resizes them
        (two windows per page); polygons clipped to the window."""
        import cv2
        from shapely.geometry import Polygon, box

        images, targets = [], []
        while len(images) < n:
            if self._use_real():
                img, polys, _ = self.real.det_page()
            else:
                img, polys, _ = synth.train_page(self.rng, self.words, self.fonts, self.det_size)
            w, h = img.size
            rel = polys / np.array([w, h], dtype=np.float32)
            image, rel = self._tensor(synth.degrade(self.rng, img), {"words": np.clip(rel, 0, 1)})
            absolute = rel["words"] * self.det_size
            c = self.det_crop
            for _ in range(min(2, n - len(images))):
                if len(absolute) and self.rng.random() < 0.85:
                    cx, cy = absolute[self.rng.randrange(len(absolute))].mean(0)
                    x0 = int(cx - c / 2 + self.rng.uniform(-c / 3, c / 3))
                    y0 = int(cy - c / 2 + self.rng.uniform(-c / 3, c / 3))
                else:
                    x0, y0 = self.rng.randint(0, self.det_size - c), self.rng.randint(0, self.det_size - c)
                x0 = min(max(x0, 0), self.det_size - c)
                y0 = min(max(y0, 0), self.det_size - c)
                window = box(x0, y0, x0 + c, y0 + c)
                kept = []
                for p in absolute:
                    if p[:, 0].max() <= x0 or p[:, 0].min() >= x0 + c or p[:, 1].max() <= y0 or p[:, 1].min() >= y0 + c:
                        continue
                    poly = Polygon(p)
                    inside = poly.intersection(window)
                    if inside.is_empty or inside.area < 4:
                        continue
                    if inside.area < poly.area - 1e-3:
                        p = cv2.boxPoints(cv2.minAreaRect(np.asarray(inside.exterior.coords, np.float32)))
                    kept.append(p - np.array([x0, y0], dtype=np.float32))
                target = np.clip(np.asarray(kept, np.float32).reshape(-1, 4, 2) / c, 0, 1)
                images.append(image[:, y0 : y0 + c, x0 : x0 + c])
                targets.append({"words": target})
            if len(images) == n and not any(len(t["words"]) for t in targets):
                # docTR's DBNet loss is undefined for a batch without a single word: draw again.
                images, targets = [], []
        return self._finish(images), targets


def loss_of(model, kind, x, y):
    if kind in ("detection", "recognition"):
        return model(x, y)["loss"]
    return F.cross_entropy(model(x), y)


def lr_at(step, total, base):
    if step < WARMUP:
        return base * (1 / 25 + (1 - 1 / 25) * step / WARMUP)
    frac = min(1.0, (step - WARMUP) / max(1, total - WARMUP))
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def validate(kind, model, x, y):
    """In-distribution check on a fixed batch (another seed): word accuracy, class accuracy or
    detection loss."""
    model.eval()
    if kind == "recognition":
        preds = [w for w, _ in model(x)["preds"]]
        out = {"word_accuracy": float(np.mean([p == t for p, t in zip(preds, y)])),
               "examples": [[t, p] for p, t in zip(preds[:8], y[:8])]}
    elif kind == "detection":
        out = {"loss": float(model(x, y)["loss"])}
    else:
        out = {"accuracy": float((model(x).argmax(1) == y).float().mean())}
    model.train()
    return out


def train(task, args, fonts):
    t = TASKS[task]
    name = t.arch + args.suffix
    minutes = args.minutes if args.minutes is not None else t.minutes
    batch = args.batch or t.batch
    lr = args.lr or t.lr
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = build(task)
    if args.init:
        # A later run of the same architecture (a fine-tune): its card names what it started from.
        model.load_state_dict(torch.load(args.init, map_location="cpu"))
        log(f"[{task}] weights from {args.init}")
    elif t.init_from:
        init_backbone(model, Path(args.backbone) if args.backbone else out / f"{TASKS[t.init_from].arch}{args.suffix}.pt",
                      task)
    # oneDNN trains the crop classifier's convs 1.6x faster on NHWC tensors (a 32x256x256 step
    # 0.50 -> 0.30 s); the other models were trained, and are replayed, in NCHW.
    layout = torch.channels_last if t.kind == "crop_orientation" else torch.contiguous_format
    model = model.to(memory_format=layout)
    corpus = Path(args.corpus) if args.corpus else None
    data = Data(task, args.seed, model.cfg, args.det_size, args.det_crop, fonts, corpus / "train" if corpus else None,
                args.real_fraction, args.scan_crops)
    # Validation on the corpus's held-out packages (`val`), never on the test split.
    val_x, val_y = Data(task, args.seed + 7919, model.cfg, args.det_size, args.det_crop, fonts,
                        corpus / "val" if corpus else None, args.real_fraction).batch(
        8 if t.kind == "detection" else min(256, batch * 8))
    model.train()
    banded = t.kind == "crop_orientation" and not args.no_bands
    if banded:
        # A band part holds text of one direction only, which batch statistics would normalise
        # away: BatchNorm keeps the recogniser's statistics (its scale and shift still train).
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=1e-4)
    log(f"[{task}] {name}: batch {batch}, lr {lr}, "
        + (f"{args.steps} steps" if args.steps else f"{minutes} min budget") + f", seed {args.seed}")

    total = args.schedule_steps or args.steps  # the schedule's length; None until calibrated
    stop = args.steps or total
    calibrate = 2 * CALIBRATE if banded else CALIBRATE
    start = time.perf_counter()
    last_log, last_step, ema, images, last_ckpt = start, 0, None, 0, start
    history = []
    timed = {True: 0.0, False: 0.0}  # calibration seconds on band and on square batches
    step = 0
    ckpt_path = out / f"{name}.ckpt"
    if args.resume and ckpt_path.exists():
        # Where the run stopped: weights, optimizer, schedule, data stream and clock.
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        data.rng.setstate(ck["data_rng"])
        torch.set_rng_state(ck["torch_rng"])
        step, ema, images, history = ck["step"], ck["ema"], ck["images"], ck["history"]
        total = args.schedule_steps or args.steps or ck["total"]
        stop = args.steps or total
        start -= ck["elapsed"]
        last_step = step
        log(f"[{task}] resumed from {ckpt_path.name} at step {step}/{total}, {ck['elapsed'] / 60:.1f} min in")

    def checkpoint():
        torch.save(model.state_dict(), out / f"{name}.pt")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "data_rng": data.rng.getstate(),
                    "torch_rng": torch.get_rng_state(), "step": step, "total": total, "ema": ema, "images": images,
                    "history": history, "elapsed": time.perf_counter() - start}, ckpt_path.with_suffix(".tmp"))
        ckpt_path.with_suffix(".tmp").replace(ckpt_path)

    while stop is None or step < stop:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, total or 10**9, lr)
        bands = banded and (step < CALIBRATE or (calibrate <= step < (total or 10**9) * (1 - SQUARE_TAIL)))
        began = time.perf_counter()
        parts = data.parts(batch, bands)
        n = sum(len(x) for x, _ in parts)
        loss = sum(loss_of(model, t.kind, x.contiguous(memory_format=layout), y) * len(x) for x, y in parts) / n
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        images += n
        value = loss.item()
        if not math.isfinite(value):
            raise SystemExit(f"[{task}] loss is {value} at step {step}")
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        now = time.perf_counter()
        timed[bands] += now - began
        if total is None and step == calibrate:
            if banded:  # the schedule ends with SQUARE_TAIL of its steps on squares
                per_step = (1 - SQUARE_TAIL) * timed[True] / CALIBRATE + SQUARE_TAIL * timed[False] / CALIBRATE
            else:
                per_step = (now - start) / step
            total = max(step + 1, int(minutes * 60 / per_step))
            stop = total
            log(f"[{task}] {per_step:.2f} s/step over {step} steps: {total} steps in {minutes} min")
        if step % (args.log_every or t.log_every) == 0 or step == stop:
            rate = (step - last_step) * batch / (now - last_log)
            log(f"[{task}] step {step}/{total or '?'} loss {value:.4f} (ema {ema:.4f}) "
                f"lr {optimizer.param_groups[0]['lr']:.2e} {rate:.1f} img/s elapsed {now - start:.0f}s")
            history.append([step, round(ema, 5), round(now - start, 1)])
            last_log, last_step = now, step
        if now - last_ckpt > args.checkpoint_minutes * 60:
            checkpoint()
            last_ckpt = now
        if args.steps is None and now - start > minutes * 60 * 1.15:
            log(f"[{task}] over budget by 15%: stopping at step {step} of {total}")
            break
    wall = time.perf_counter() - start
    checkpoint()
    val = validate(t.kind, model, val_x, val_y)
    log(f"[{task}] done: {step} steps, {images} images, {wall / 60:.1f} min, "
        f"{images / wall:.1f} img/s; validation {json.dumps(val, ensure_ascii=False)}")
    record = {
        "task": task, "arch": t.arch, "name": name, "seed": args.seed, "steps": step, "batch": batch, "lr": lr,
        "warmup": WARMUP, "minutes_budget": minutes, "wall_s": round(wall, 1), "threads": args.threads,
        "images_per_s": round(images / wall, 2), "final_loss_ema": ema, "validation": val, "history": history,
        "det_size": args.det_size, "det_crop": args.det_crop, "fonts": [Path(f).name for f in fonts],
        "versions": versions(), "argv": sys.argv,
        "schedule_steps": total, "replay": replay_command(task, args, step, total),
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
    return record


def init_backbone(model, source, task):
    """The recogniser's feature extractor (`feat_extractor.*`) copied into a classifier's `features.*`,
    from train.py's checkpoint or from the recogniser's ONNX export (`--backbone`)."""
    if not source.is_file():
        raise SystemExit(f"[{task}] starts from {source}: train --task reco into the same --out first, "
                         "or pass --backbone with the recogniser's .pt or .onnx")
    state = recogniser_from_onnx(source) if source.suffix == ".onnx" else torch.load(source, map_location="cpu")
    prefix = "feat_extractor."
    features = {"features." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in model.state_dict() if k.startswith("features.") and k not in features]
    if missing:
        raise SystemExit(f"[{task}] {source.name} lacks {missing[:3]}")
    model.load_state_dict(features, strict=False)
    log(f"[{task}] backbone from {source.name} ({len(features)} tensors)")


def recogniser_from_onnx(path):
    """The recogniser's state dict rebuilt from its ONNX export. The exporter folded each
    BatchNorm into the conv before it, so that conv takes the folded weights and its BatchNorm
    becomes the identity with the folded bias (mean 0, variance 1 - eps): the same function in
    eval mode. Convs are matched in execution order, which for docTR's MobileNet is the order
    its modules are registered in; shapes are checked one by one."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name.startswith("/feat_extractor/")]
    model = build("reco")
    modules = list(model.feat_extractor.named_modules())
    state = model.state_dict()
    targets = [(i, name) for i, (name, m) in enumerate(modules) if isinstance(m, torch.nn.Conv2d)]
    if len(targets) != len(convs):
        raise SystemExit(f"{path.name}: {len(convs)} feature convs, the recogniser has {len(targets)}")
    for node, (i, name) in zip(convs, targets):
        w, b = weights[node.input[1]], weights[node.input[2]]
        key = f"feat_extractor.{name}"
        if tuple(w.shape) != tuple(state[f"{key}.weight"].shape):
            raise SystemExit(f"{path.name}: {node.name} has weights {list(w.shape)}, {key} wants "
                             f"{list(state[key + '.weight'].shape)}")
        state[f"{key}.weight"] = w
        if f"{key}.bias" in state:
            state[f"{key}.bias"] = b
            continue
        bn_name, bn = modules[i + 1]
        if not isinstance(bn, torch.nn.BatchNorm2d):
            raise SystemExit(f"{path.name}: {key} has no bias and no BatchNorm after it")
        bn_key = f"feat_extractor.{bn_name}"
        state[f"{bn_key}.weight"] = torch.ones_like(b)
        state[f"{bn_key}.bias"] = b
        state[f"{bn_key}.running_mean"] = torch.zeros_like(b)
        state[f"{bn_key}.running_var"] = torch.full_like(b, 1 - bn.eps)
    return state


def replay_command(task, args, steps, schedule):
    cmd = f"python models/train/train.py --task {task} --seed {args.seed} --steps {steps}"
    if schedule != steps:
        cmd += f" --schedule-steps {schedule}"
    if args.batch:
        cmd += f" --batch {args.batch}"
    if args.lr:
        cmd += f" --lr {args.lr}"
    if TASKS[task].kind == "crop_orientation" and args.no_bands:
        cmd += " --no-bands"
    if TASKS[task].init_from and args.backbone:
        cmd += f" --backbone {args.backbone}"
    if TASKS[task].kind == "detection":
        cmd += f" --det-size {args.det_size} --det-crop {args.det_crop}"
    if args.corpus:
        cmd += f" --corpus CORPUS --real-fraction {args.real_fraction} --suffix {args.suffix}"
    if args.scan_crops:
        cmd += f" --scan-crops {args.scan_crops}"
    if args.init:
        cmd += f" --init {Path(args.init).name}"
    return cmd


def export(task, args):
    """docTR's exporter as make_fixtures.export_doctr uses it: TorchScript-based, dynamic batch,
    dynamo=False, dummy input of batch 2. Checks the graph against PyTorch with ONNX Runtime."""
    import onnxruntime as ort
    from doctr.models.utils import export_model_to_onnx

    out = Path(args.out)
    name = TASKS[task].arch + args.suffix
    chw = input_chw(task, args.det_size)
    model = build(task, exportable=True)
    model.load_state_dict(torch.load(out / f"{name}.pt", map_location="cpu"))
    model = model.eval()
    with torch.no_grad():
        path = Path(export_model_to_onnx(model, model_name=str(out / name), dummy_input=torch.rand((2, *chw))))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.rand((1, *chw))
    with torch.no_grad():
        ref = model(x)
    ref = ref["logits"] if isinstance(ref, dict) else ref
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(got - ref.numpy()).max())
    log(f"[{task}] exported {path} ({path.stat().st_size / 2**20:.1f} MiB); onnxruntime batch 1 "
        f"{list(got.shape)}, max |ort - torch| {diff:.2e}")
    if diff > 1e-3:
        raise SystemExit(f"[{task}] ONNX Runtime disagrees with PyTorch by {diff}")
    return path


CARD_BODY = {
    "detection": """arch = "db"
task = "detection"
input = {input}
mean = [0.798, 0.785, 0.772]
std = [0.264, 0.2749, 0.287]
channels = "rgb"
activation = "sigmoid"
resize = {{ mode = "fixed", symmetric_pad = true }}
postprocess = {{ bin_thresh = {bin_thresh}, box_thresh = {box_thresh}, unclip_ratio = {unclip_ratio}, morphology = "open3" }}
""",
    "recognition": """arch = "crnn"
task = "recognition"
input = {input}
mean = [0.694, 0.695, 0.693]
std = [0.299, 0.296, 0.301]
channels = "rgb"
activation = "softmax"
resize = {{ mode = "fixed", symmetric_pad = false }}
vocab = {{ name = "french" }}
decoder = {{ kind = "ctc", blank = "last", confidence = "min" }}
split_wide_crops = true
""",
    "crop_orientation": """arch = "classifier"
task = "crop_orientation"
input = {input}
mean = [0.694, 0.695, 0.693]
std = [0.299, 0.296, 0.301]
channels = "rgb"
activation = "softmax"
resize = {{ mode = "fixed", symmetric_pad = true }}
classes = [0, -90, 180, 90]
""",
}
CARD_BODY["page_orientation"] = CARD_BODY["crop_orientation"].replace("crop_orientation", "page_orientation")
# docTR's DBNet post-processing, but boxes grown less than its 1.5: chosen on validation pages of
# another seed than the held-out one (evaluate.py --seed 777, 20 straight pages: unclip 1.0/1.1/
# 1.2/1.3/1.5/1.7 gave F1 0.915/0.926/0.929/0.930/0.914/0.882), since the wider boxes take in a
# neighbour's glyph or the hyphen of a compound word. The cards carry it; docTR's predictor reads it
# from there (tests/fixtures/doctr_onnx.py).
DET_POSTPROCESS = {"bin_thresh": 0.3, "box_thresh": 0.1, "unclip_ratio": 1.3}


def card(task, args, record, onnx_path):
    t = TASKS[task]
    v = record["versions"]
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    what = {
        "detection": f"{args.det_crop}x{args.det_crop} windows of synthetic pages resized to {args.det_size}x{args.det_size}",
        "recognition": "synthetic word crops at 32x128",
        "crop_orientation": "synthetic word crops, each turned 0/90/180/270 degrees, cut to bands of the 256x256 input",
        "page_orientation": "synthetic pages turned 0/90/180/270 degrees, at 512x512",
    }[t.kind]
    source = "models/train/synth.py"
    if args.corpus:
        what = what.replace("synthetic", "real and synthetic")
        source = (f"{args.real_fraction:.0%} real pages of Debian documentation PDFs, models/train/corpus.py's train "
                  "split; the rest models/train/synth.py in the typefaces of synth.doc_fonts")
    start = (Path(args.init).stem if args.init
             else f"the backbone of {TASKS[t.init_from].arch}{args.suffix}" if t.init_from
             else "random initialisation")
    text = (
        f"# docTR {v['python-doctr']} {t.arch}, trained in Kiln from {start} on {what}\n"
        f"# ({source}): {record['steps']} steps of {record['batch']}, seed {record['seed']}, "
        f"{record['wall_s'] / 60:.0f} min on {record['threads']} CPU threads.\n"
        f"# Made by: {record['replay']}\n"
        f"# With python-doctr {v['python-doctr']}, torch {v['torch']}, torchvision {v['torchvision']}, "
        f"onnx {v['onnx']} (models/train/requirements.txt).\n"
        f'name = "{record["name"]}"\n'
        + CARD_BODY[t.kind].format(input=list(input_chw(task, args.det_size)), **DET_POSTPROCESS)
        + f'source = {{ bundled = "onnx/{onnx_path.name}", sha256 = "{sha}" }}\n'
    )
    path = Path(args.cards or args.out) / f"{record['name']}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    log(f"[{task}] card {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=[*TASKS, "all"], default="all")
    ap.add_argument("--minutes", type=float, help="budget per task (default: per-task, 112 min in all)")
    ap.add_argument("--steps", type=int, help="exact step count instead of a time budget (replays a run)")
    ap.add_argument("--schedule-steps", type=int, help="learning-rate schedule length, when a run stopped short of it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cards", help="where to write the model cards (default: --out)")
    ap.add_argument("--suffix", default="_synth", help="appended to the architecture for the model name")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--log-every", type=int)
    ap.add_argument("--det-size", type=int, default=1024, help="page size the detector is fed at inference")
    ap.add_argument("--det-crop", type=int, default=256, help="training window in that page")
    ap.add_argument("--backbone", help="the recogniser (.pt from this script, or its .onnx export) whose features "
                                       "start an orientation classifier (default: --out's checkpoint)")
    ap.add_argument("--no-bands", action="store_true", help="crop orientation on 256x256 squares throughout")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--export-only", action="store_true", help="export and write the card of a finished run in --out")
    ap.add_argument("--corpus", help="corpus.py's output (train/ and val/ splits): real pages for "
                                     "--real-fraction of the samples")
    ap.add_argument("--real-fraction", type=float, default=0.75)
    ap.add_argument("--scan-crops", type=float, default=0.0,
                    help="fraction of real word crops cut from a scan-like copy of their region (real.scan_crop)")
    ap.add_argument("--init", help="train.py weights (.pt) of the same architecture to start from (a fine-tune)")
    ap.add_argument("--resume", action="store_true", help="continue from --out's checkpoint of the task, if any")
    ap.add_argument("--checkpoint-minutes", type=float, default=10)
    ap.add_argument("--no-font-install", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    if not args.no_font_install:
        synth.ensure_fonts(log, synth.DOC_FONT_PACKAGES if args.corpus else None)
    # Runs on the corpus draw their synthetic words in the typefaces of real documents.
    fonts = synth.doc_fonts() if args.corpus else synth.fonts(synth.TRAIN_FONTS)
    if len(fonts) < 4:
        raise SystemExit("train: fewer than 4 training fonts; install " + " ".join(
            synth.DOC_FONT_PACKAGES if args.corpus else synth.FONT_PACKAGES))
    log(f"train: {len(fonts)} fonts, versions {versions()}")
    tasks = list(TASKS) if args.task == "all" else [args.task]
    begin = time.perf_counter()
    for task in tasks:
        if args.export_only:
            record = json.loads((Path(args.out) / f"{TASKS[task].arch}{args.suffix}.json").read_text())
        else:
            record = train(task, args, fonts)
        if not args.no_export:
            card(task, args, record, export(task, args))
        log(f"train: {(time.perf_counter() - begin) / 60:.1f} min so far")


if __name__ == "__main__":
    main()
