"""Training samples from real pages: the `train` split of corpus.py (born-digital PDF pages and
their text-layer words), drawn with a seeded `random.Random`, with scan-like degradation.

Word crops imitate what the detector hands the recogniser: the word's ink box grown by a random
margin, sometimes slightly turned, blurred, noisy or JPEG-compressed. Pages come with their word
boxes as polygons, for detection and page orientation.
"""

import io
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

import synth

# Recognition crops wider than this many heights are split into windows at inference
# (`split_wide_crops`); the recogniser never sees them whole.
MAX_ASPECT = 8.0
# A CTC recogniser with 32 output steps needs a label no longer than that, repeats separated.
MAX_LEN = 24


class RealPages:
    def __init__(self, root: Path, rng, cache_pages=64, scan=0.0):
        self.root = Path(root)
        index = json.loads((self.root / "index.json").read_text())
        self.names = index["pages"]
        if not self.names:
            raise SystemExit(f"{self.root}: no pages (run models/train/corpus.py --split train)")
        self.rng = rng
        self.cache = OrderedDict()
        self.cache_pages = cache_pages
        self.texts = None
        # The fraction of word crops cut from a scan-like copy of the region around the word.
        self.scan = scan

    def page(self, name):
        """(RGB image, words) of a page; the most recently used pages stay decoded."""
        if name in self.cache:
            self.cache.move_to_end(name)
            return self.cache[name]
        meta = json.loads((self.root / f"{name}.json").read_text())
        img = Image.open(self.root / f"{name}.png").convert("RGB")
        self.cache[name] = (img, meta["words"])
        if len(self.cache) > self.cache_pages:
            self.cache.popitem(last=False)
        return self.cache[name]

    def word_text(self):
        """The text of a readable word drawn from the pages (for synthetic crops in other fonts).
        The texts are read once, without the page images: decoding a page per word made data the
        larger part of a training step."""
        if self.texts is None:
            self.texts = [w["text"] for name in self.names
                          for w in json.loads((self.root / f"{name}.json").read_text())["words"] if readable(w)]
        return self.rng.choice(self.texts)

    def word_crops(self, n, per_page=8):
        """`n` (text, HWC uint8 crop) pairs, up to `per_page` from each page drawn."""
        out = []
        while len(out) < n:
            img, words = self.page(self.rng.choice(self.names))
            usable = [w for w in words if readable(w)]
            for w in self.rng.sample(usable, min(per_page, len(usable), n - len(out))):
                out.append((w["text"], self.crop(img, w)))
        return out

    def crop(self, img, word):
        rng = self.rng
        x0, y0, x1, y1 = word["box"]
        # Margins scale with the font's size: a detector's box around "=" or "..." is about as
        # high as the line's, not as the ink.
        em = max(word.get("size", y1 - y0), y1 - y0, 1)
        grow = max(0.0, 0.6 * em - (y1 - y0)) / 2
        y0, y1 = y0 - grow, y1 + grow
        m = lambda lo, hi: rng.uniform(lo, hi) * em  # noqa: E731
        left, right = x0 - m(-0.03, 0.4), x1 + m(-0.03, 0.4)
        top, bottom = y0 - m(-0.03, 0.25), y1 + m(-0.03, 0.25)
        if self.scan and rng.random() < self.scan:
            return scan_crop(rng, img, (left, top, right, bottom), em)
        if rng.random() < 0.2:
            # A slightly turned box: cut a larger region, turn it, keep the centre.
            angle = rng.uniform(-2.5, 2.5)
            pad = int(em) + 4
            region = img.crop((int(left) - pad, int(top) - pad, int(right) + pad, int(bottom) + pad))
            bg = tuple(int(v) for v in np.median(np.asarray(region).reshape(-1, 3), axis=0))
            region = region.rotate(angle, resample=Image.BICUBIC, fillcolor=bg)
            crop = region.crop((pad, pad, pad + int(right) - int(left), pad + int(bottom) - int(top)))
        else:
            crop = img.crop((int(left), int(top), max(int(right), int(left) + 1), max(int(bottom), int(top) + 1)))
        return degrade(rng, crop)

    def det_page(self):
        """(RGB image, (N, 4, 2) polygons, texts) of a page drawn at random, degraded like a scan
        or turned a little at times."""
        rng = self.rng
        img, words = self.page(rng.choice(self.names))
        polys = np.array([[[x0, y0], [x1, y0], [x1, y1], [x0, y1]] for x0, y0, x1, y1 in (w["box"] for w in words)],
                         dtype=np.float32).reshape(-1, 4, 2)
        texts = [w["text"] for w in words]
        bg = tuple(int(v) for v in np.median(np.asarray(img)[::8, ::8].reshape(-1, 3), axis=0))
        if rng.random() < 0.3:
            img, polys = synth.rotate(img, polys, rng.uniform(-3, 3), bg)
        return img, polys, texts


def scan_crop(rng, img, box, em):
    """The box cut from a printed-and-scanned copy of the region around it, as
    corpus.scan_like makes whole pages: the region turned 1-3 degrees about the box's centre
    (the detector's straight box around a skewed word), blurred, faded, tinted, dimmed, noisy,
    then JPEG at quality 40-60. Every effect at once, as on a scan."""
    left, top, right, bottom = (int(v) for v in box)
    pad = int(2 * em) + 4
    region = img.crop((left - pad, top - pad, max(right, left + 1) + pad, max(bottom, top + 1) + pad))
    angle = rng.uniform(1.0, 3.0) * rng.choice((-1, 1))
    region = region.rotate(angle, resample=Image.BICUBIC, fillcolor=(255, 255, 255))
    region = region.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9)))
    arr = np.asarray(region).astype(np.float32) / 255.0
    arr = 1.0 - (1.0 - arr) * rng.uniform(0.75, 0.95)
    tint = np.array([rng.uniform(0.88, 1.0), rng.uniform(0.86, 0.98), rng.uniform(0.78, 0.95)], np.float32)
    arr = arr * tint * rng.uniform(0.75, 1.0)
    noise = np.random.default_rng(rng.getrandbits(64)).normal(0, rng.uniform(0.02, 0.04), arr.shape[:2])
    arr = arr + noise[:, :, None].astype(np.float32)
    region = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))
    crop = region.crop((pad, pad, region.width - pad, region.height - pad))
    buf = io.BytesIO()
    crop.save(buf, "JPEG", quality=rng.randint(40, 60))
    return np.array(Image.open(buf).convert("RGB"), dtype=np.uint8)


def readable(word):
    text = word["text"]
    x0, y0, x1, y1 = word["box"]
    return (len(text) <= MAX_LEN and all(c in synth.VOCAB for c in text)
            and (x1 - x0) <= MAX_ASPECT * max(y1 - y0, 1))


def degrade(rng, img):
    """A real crop made to look printed and scanned at times: paper tint, blur, contrast loss,
    noise and JPEG, each on its own draw. Returns an RGB uint8 array."""
    if rng.random() < 0.25:
        tint = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.83, 1.0), rng.uniform(0.75, 1.0)], np.float32)
        img = Image.fromarray((np.asarray(img).astype(np.float32) * tint).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    arr = np.asarray(img).astype(np.float32)
    if rng.random() < 0.25:
        a = rng.uniform(0.6, 0.9)
        arr = 255 - (255 - arr) * a
    if rng.random() < 0.35:
        noise = np.random.default_rng(rng.getrandbits(64)).standard_normal(arr.shape[:2], dtype=np.float32)
        arr = arr + noise[..., None] * rng.uniform(2.0, 10.0)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.25:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(30, 80))
        img = Image.open(buf).convert("RGB")
    return np.array(img, dtype=np.uint8)
