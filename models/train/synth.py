"""Seeded synthetic text for training and evaluating Kiln's docTR models: words over docTR's
`french` vocabulary rendered with Debian's fonts (PIL), as recognition crops, as pages with
word-level polygons for detection, and turned by 0/90/180/270 degrees for the orientation
classifiers. Everything here is a pure function of a `random.Random`: the same seed gives the same
images. Training and evaluation use disjoint font lists (`TRAIN_FONTS`, `HELD_OUT_FONTS`).
"""

import functools
import io
import math
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from doctr.datasets.vocabs import VOCABS

VOCAB = VOCABS["french"]

FONT_DIRS = [
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/truetype/liberation2"),
    Path("/usr/share/fonts/truetype/liberation"),
    Path("/usr/share/fonts/truetype/noto"),
]
FONT_PACKAGES = ["fonts-dejavu", "fonts-liberation2", "fonts-noto-core"]

# The fonts of Kiln's end-to-end test pages (tests/fixtures/make_pages.py) are all in here.
TRAIN_FONTS = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSansCondensed-Bold.ttf", "DejaVuSerifCondensed-Italic.ttf",
    "LiberationSans-Regular.ttf", "LiberationSans-Italic.ttf", "LiberationSans-BoldItalic.ttf",
    "LiberationSerif-Regular.ttf", "LiberationSerif-Bold.ttf", "LiberationSerif-Italic.ttf",
    "LiberationMono-Regular.ttf", "LiberationMono-Bold.ttf",
]
# Never rendered in training. Noto (fonts-noto-core) is optional: training does not depend on it.
HELD_OUT_FONTS = [
    "DejaVuSansCondensed.ttf", "DejaVuSerifCondensed.ttf", "DejaVuSerif-BoldItalic.ttf",
    "LiberationSans-Bold.ttf", "LiberationSerif-BoldItalic.ttf", "LiberationMono-Italic.ttf",
    "NotoSans-Regular.ttf", "NotoSerif-Regular.ttf", "NotoSans-Bold.ttf",
]

# Common French and English words (every character is in VOCAB; checked below).
WORDS = """
le la les un une des du de et est en au aux ce cette ces il elle ils elles nous vous je tu on qui que
quoi dont où mais ou donc or ni car pour par avec sans sous sur dans entre vers chez avant après
pendant depuis très plus moins bien mal aussi encore toujours jamais déjà ici là oui non merci
bonjour monsieur madame société entreprise facture numéro date total montant prix quantité
référence adresse ville pays téléphone courriel client fournisseur commande livraison paiement
échéance banque compte crédit débit taxe remise article produit service contrat signature page
document fichier rapport année mois semaine jour heure minute matin soir été hiver printemps
automne janvier février mars avril mai juin juillet août septembre octobre novembre décembre
lundi mardi mercredi jeudi vendredi samedi dimanche maison école élève professeur garçon fille
enfant père mère frère famille ami voiture train avion gare route rue place marché ville
village forêt rivière montagne mer plage soleil lune étoile ciel nuage pluie neige vent froid
chaud grand petit nouveau vieux beau belle jeune long court haut bas premier dernier dernière
seul même autre tout tous toute toutes chaque plusieurs quelque certain général public privé
français anglais européen national international économie politique histoire science nature
musique théâtre cinéma livre lettre mot phrase texte ligne titre chapitre exemple question
réponse problème solution résultat système méthode modèle données valeur nombre taille poids
couleur rouge bleu vert jaune noir blanc gris orange violet rose café thé pain fromage vin eau
lait sucre sel fruit légume pomme poire fraise cerise tomate crème noël maïs naïf ça voilà
déçu reçu leçon façon français hôtel hôpital forêt fenêtre tête être âge côté goût château
the of and to in is was for on that with as by at from this have are be or an not but all
were which when there can their one has more will would about they been if so what up out
into some other could time only new people two may first any like now my over such our man
me even most made after also did many before must through back years where much your way well
down should because each just those how too good very make world still own see men work long
get here between both life being under never day same another know while last might us great
old year off come since against go came right used take three states himself few house use
during without again place around however home small found thought went say part once general
high upon school every does got united left number course war until always away something fact
though water less public put think almost hand enough far took head yet government system better
set told nothing night end why called find going look asked later knew point next program city
business give group toward young days let room president side social given present several order
national possible rather second face per among form important often things looking early white
case john become large big need four within felt along children saw best church ever least power
development light thing seemed family interest want members mind country area others done turned
although open problem kiln graph compiler tensor kernel device render detection recognition
orientation model export python rust vulkan memory shape network layer weight input output batch
image scale paper invoice receipt amount customer account address phone email website street
""".split()
CONSONANTS = "bcdfghjklmnpqrstvwxz"
VOWELS = "aeiouy"
ACCENTED = "àâéèêëîïôùûüç"
PUNCT_AFTER = ",.:;!?"
MAX_LEN = 16

assert all(c in VOCAB for w in WORDS for c in w), "WORDS has a character outside VOCAB"


# Typefaces of real documents, for synthetic words in training runs on the corpus (`doc_fonts`):
# the TeX Gyre and URW clones of the PostScript 35 (Times, Helvetica, Courier, Palatino, ...),
# Latin Modern (TeX's Computer Modern), Noto, FreeFont, DejaVu and Liberation. Math, symbol and
# script faces are left out, and so are HELD_OUT_FONTS.
DOC_FONT_PACKAGES = ["fonts-texgyre", "fonts-urw-base35", "fonts-lmodern", "fonts-noto-core", "fonts-freefont-ttf",
                     "fonts-dejavu", "fonts-liberation2"]
DOC_FONT_GLOBS = [
    ("/usr/share/texmf/fonts/opentype/public/tex-gyre", "texgyre*.otf"),
    ("/usr/share/fonts/opentype/urw-base35", "*.otf"),
    ("/usr/share/texmf/fonts/opentype/public/lm", "lm*.otf"),
    ("/usr/share/fonts/truetype/noto", "Noto[SM]*-*.ttf"),
    ("/usr/share/fonts/truetype/freefont", "Free*.ttf"),
    ("/usr/share/fonts/truetype/dejavu", "DejaVu*.ttf"),
    ("/usr/share/fonts/truetype/liberation2", "Liberation*.ttf"),
]
DOC_FONT_EXCLUDE = ("math", "chorus", "Z003", "D050000L", "StandardSymbols", "lmmonoprop", "caps", "dunh", "Display")


def doc_fonts():
    """Installed typefaces of DOC_FONT_GLOBS whose glyphs cover the vocabulary's letters and digits."""
    held_out = set(HELD_OUT_FONTS)
    out = []
    for d, pattern in DOC_FONT_GLOBS:
        for p in sorted(Path(d).glob(pattern)):
            if p.name in held_out or any(x.lower() in p.name.lower() for x in DOC_FONT_EXCLUDE):
                continue
            if not (p.name.startswith(("NotoSans-", "NotoSerif-", "NotoSansMono-")) or "noto" not in d):
                continue
            try:
                covered = font_chars(str(p))
            except OSError:
                continue
            if set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") <= covered:
                out.append(str(p))
    return out


def ensure_fonts(log=print, packages=None):
    """Installs Debian's font packages when a font of either list is missing (or, given
    `packages`, when one of them is not installed) and we are root."""
    missing = [n for n in TRAIN_FONTS + HELD_OUT_FONTS if find_font(n) is None]
    if packages:
        missing += [p for p in packages
                    if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log(f"fonts: {len(missing)} not installed ({', '.join(missing)}); going on without them")
        return
    packages = sorted(set(FONT_PACKAGES) | set(packages or []))
    log(f"fonts: installing {' '.join(packages)} for {', '.join(missing)}")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ok = subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    if not ok:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        ok = subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    if not ok:
        log("fonts: apt-get install failed; going on with the fonts that are there")
    find_font.cache_clear()


@functools.lru_cache(maxsize=None)
def find_font(name):
    for d in FONT_DIRS:
        if (d / name).is_file():
            return str(d / name)
    return None


def fonts(names):
    """The installed fonts of `names`, as paths."""
    return [p for p in map(find_font, names) if p is not None]


@functools.lru_cache(maxsize=1024)
def load_font(path, size):
    return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=None)
def font_chars(path):
    """VOCAB characters the font has a glyph for (a missing glyph renders as the .notdef box)."""
    f = load_font(path, 24)

    def mask(c):
        m = f.getmask(c)
        return m.size, bytes(np.asarray(m))

    notdef = mask("\ue000")
    return frozenset(c for c in VOCAB if mask(c) != notdef)


def renderable(path, text):
    return set(text) <= font_chars(path)


# Word kinds and their weights. Evaluation leans to text-like words; training sees more random
# strings so that every class of the vocabulary gets examples.
TRAIN_MIX = {"dict": 0.40, "pseudo": 0.20, "number": 0.15, "random": 0.25}
EVAL_MIX = {"dict": 0.55, "pseudo": 0.20, "number": 0.20, "random": 0.05}


class Words:
    """Seeded word sampler over VOCAB."""

    def __init__(self, rng, mix=TRAIN_MIX):
        self.rng = rng
        self.kinds = list(mix)
        self.weights = [mix[k] for k in self.kinds]

    def __call__(self):
        kind = self.rng.choices(self.kinds, self.weights)[0]
        word = getattr(self, kind)()
        return word[:MAX_LEN]

    def _case(self, w):
        r = self.rng.random()
        return w.upper() if r < 0.08 else w.capitalize() if r < 0.3 else w

    def _punct(self, w):
        r = self.rng.random()
        if r < 0.10:
            return w + self.rng.choice(PUNCT_AFTER)
        if r < 0.13:
            a, b = self.rng.choice(["()", '""', "''", "[]"])
            return a + w + b
        return w

    def dict(self):
        w = self.rng.choice(WORDS)
        if self.rng.random() < 0.05:
            w = w + "-" + self.rng.choice(WORDS)
        elif self.rng.random() < 0.03:
            w = self.rng.choice(["l'", "d'", "qu'", "n'", "s'", "c'"]) + w
        return self._punct(self._case(w))

    def pseudo(self):
        r = self.rng
        syl = []
        for _ in range(r.choice([1, 2, 2, 3, 3, 4])):
            v = r.choice(ACCENTED) if r.random() < 0.12 else r.choice(VOWELS)
            c = r.choice(CONSONANTS)
            syl.append(c + v if r.random() < 0.7 else v + c)
        return self._punct(self._case("".join(syl)))

    def number(self):
        r = self.rng
        d = lambda n: "".join(r.choice("0123456789") for _ in range(n))  # noqa: E731
        k = r.randrange(11)
        if k == 0:
            return d(r.randint(1, 2)) + "/" + d(2) + "/" + r.choice(["19", "20"]) + d(2)
        if k == 1:
            return d(2) + ":" + d(2)
        if k == 2:
            return str(r.randint(0, 9999)) + r.choice([",", "."]) + d(2)
        if k == 3:
            return str(r.randint(1, 999)) + r.choice(["€", "%", "$", "£", "°"])
        if k == 4:
            return r.choice(["€", "$", "£", "¥"]) + str(r.randint(1, 9999))
        if k == 5:
            return r.choice(["+", "-", "n°", "#"]) + d(r.randint(1, 4))
        if k == 6:
            return d(2) + "-" + d(2) + "-" + d(2)
        if k == 7:
            return str(r.randint(1, 99)) + r.choice(["er", "e", "ème", "st", "nd", "th"])
        if k == 8:
            return r.choice("ABCDEFGHJKLMNPRSTUVWXYZ") + d(r.randint(2, 6))
        return str(r.randint(0, 10 ** r.randint(1, 7)))

    def random(self):
        r = self.rng
        pools = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", VOCAB]
        weights = [0.5, 0.15, 0.15, 0.2]
        n = r.choice([1, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 8, 9, 10, 12])
        return "".join(r.choice(r.choices(pools, weights)[0]) for _ in range(n))


def paper(rng):
    r = rng.random()
    if r < 0.6:
        return (255, 255, 255)
    if r < 0.9:
        g = rng.randint(225, 250)
        return tuple(min(255, g + rng.randint(-6, 6)) for _ in range(3))
    return tuple(rng.randint(200, 255) for _ in range(3))


def ink(rng, bg):
    r = rng.random()
    if r < 0.7:
        g = rng.randint(0, 70)
        return (g, g, g)
    if r < 0.95:
        return tuple(rng.randint(0, 110) for _ in range(3))
    # Low contrast: grey on paper.
    g = max(0, min(bg) - rng.randint(90, 140))
    return (g, g, g)


def degrade(rng, img, strength=1.0):
    """Light blur, contrast loss, Gaussian noise and JPEG artefacts; returns an RGB uint8 array."""
    if rng.random() < 0.35 * strength:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.1)))
    if rng.random() < 0.15 * strength:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(40, 90))
        img = Image.open(buf).convert("RGB")
    arr = np.asarray(img)
    if rng.random() < 0.5 * strength:
        nrng = np.random.default_rng(rng.getrandbits(64))
        noise = nrng.standard_normal(arr.shape[:2], dtype=np.float32) * rng.uniform(2.0, 9.0)
        arr = np.clip(arr.astype(np.float32) + noise[..., None], 0, 255)
    if rng.random() < 0.15 * strength:
        a = rng.uniform(0.6, 0.9)
        arr = arr.astype(np.float32) * a + (1 - a) * float(np.mean(arr))
    return np.array(arr, dtype=np.uint8)


def rotate(img, polys, angle, fill):
    """Turns a page `angle` degrees counter-clockwise (expanding the canvas) with its (N, 4, 2)
    absolute polygons."""
    if angle % 360 == 0:
        return img, polys
    w, h = img.size
    out = img.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=fill)
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    # y points down: a counter-clockwise turn on screen maps (dx, dy) to (dx c + dy s, -dx s + dy c).
    dx, dy = polys[..., 0] - w / 2, polys[..., 1] - h / 2
    nw, nh = out.size
    turned = np.stack([nw / 2 + dx * c + dy * s, nh / 2 - dx * s + dy * c], axis=-1)
    return out, turned.astype(np.float32)


# Orientation classes of docTR's classifiers, in output order. A sample of class `k` is the
# straight image turned by -ORIENTATIONS[k] degrees counter-clockwise (docTR's references/
# classification/train_orientation.py: F.rotate(img, -angle)), which docTR's rectify_crops undoes.
ORIENTATIONS = [0, -90, 180, 90]


def turn(arr, k):
    """Class-`k` view of a straight HWC image: np.rot90 turns counter-clockwise, so k quarter
    turns give -90 for k = 1 and 90 for k = 3 as the classes are listed."""
    return np.ascontiguousarray(np.rot90(arr, k))


def word_crop(rng, text, font, size, bg=None, fg=None, skew=0.0):
    """One word with loose, jittered margins like a detected box, as an RGB uint8 array."""
    bg = bg or paper(rng)
    fg = fg or ink(rng, bg)
    if rng.random() < 0.04:
        bg, fg = fg, bg
    f = load_font(font, size)
    x0, y0, x1, y1 = f.getbbox(text, anchor="ls")
    pad = size + 4
    img = Image.new("RGB", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), bg)
    ImageDraw.Draw(img).text((pad - x0, pad - y0), text, font=f, fill=fg, anchor="ls")
    if skew:
        img = img.rotate(skew, resample=Image.BICUBIC, fillcolor=bg)
    m = lambda lo, hi: int(round(rng.uniform(lo, hi) * size))  # noqa: E731
    left, top = pad - m(-0.03, 0.35), pad - m(-0.06, 0.30)
    right, bottom = pad + x1 - x0 + m(-0.03, 0.35), pad + y1 - y0 + m(-0.06, 0.30)
    # A flat mark ("-", ".") with inward margins could leave nothing: keep a pixel (the same draws).
    img = img.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
    return degrade(rng, img)


def page(rng, words, fonts_, width, height, em, *, one_style=False, gap_em=(0.22, 0.9), wide_gap_p=0.1,
         columns_p=0.2, rules_p=0.3, bg=None):
    """Left-aligned paragraphs of words. `em(rng)` draws a font size in pixels (per paragraph, or per
    page when `one_style`). Returns the PIL image, absolute word polygons (N, 4, 2) clockwise from
    the top-left, and the words."""
    bg = bg or paper(rng)
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    polys, texts = [], []

    def style():
        font = rng.choice(fonts_)
        return font, max(6, int(round(em(rng)))), ink(rng, bg)

    page_style = style()
    margin = int(width * rng.uniform(0.03, 0.1))
    cols = 2 if rng.random() < columns_p and width > 500 else 1
    gutter = int(width * rng.uniform(0.04, 0.08))
    col_w = (width - 2 * margin - gutter * (cols - 1)) / cols
    for col in range(cols):
        left = margin + col * (col_w + gutter)
        y = int(height * rng.uniform(0.03, 0.1))
        while True:
            font, size, color = page_style if one_style else style()
            f = load_font(font, size)
            ascent, descent = f.getmetrics()
            line_h = size * rng.uniform(1.15, 1.7)
            wide = rng.random() < wide_gap_p
            n_lines = rng.randint(1, 7)
            if y + ascent + descent > height * 0.97:
                break
            for li in range(n_lines):
                base = y + ascent
                if base + descent > height * 0.97:
                    break
                x = left + (size * rng.uniform(0.5, 3) if li == 0 and rng.random() < 0.3 else 0)
                end = left + col_w * (1.0 if li < n_lines - 1 else rng.uniform(0.3, 1.0))
                for _ in range(60):
                    w = words()
                    if not renderable(font, w):
                        continue
                    adv = f.getlength(w)
                    if x + adv > end:
                        break
                    draw.text((x, base), w, font=f, fill=color, anchor="ls")
                    bx0, by0, bx1, by1 = f.getbbox(w, anchor="ls")
                    if bx1 - bx0 >= 2 and by1 - by0 >= 2:
                        x0, y0, x1, y1 = x + bx0, base + by0, x + bx1, base + by1
                        polys.append([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
                        texts.append(w)
                    g = rng.uniform(1.0, 2.5) if wide else rng.uniform(*gap_em)
                    x += adv + g * size
                y += line_h
            y += size * rng.uniform(0.3, 1.5)
            if rng.random() < rules_p:
                ry = int(y - size * 0.4)
                draw.line([(left, ry), (left + col_w * rng.uniform(0.3, 1), ry)], fill=color,
                          width=rng.randint(1, 3))
    polys = np.asarray(polys, dtype=np.float32).reshape(-1, 4, 2)
    return img, polys, texts


def log_uniform(lo, hi):
    return lambda rng: math.exp(rng.uniform(math.log(lo), math.log(hi)))


def train_page(rng, words, fonts_, model_size, turns=True, long_side=(700, 1500), em=(9, 56)):
    """A training page for detection / page orientation. Text sizes are drawn as seen by a model
    fed the page resized to `model_size` (longest side): `em` px per em, log-uniform. Returns
    image, polygons, words."""
    long_side = rng.randint(*long_side)
    aspect = rng.uniform(0.6, 1.5)
    w, h = (long_side, int(long_side * aspect)) if aspect < 1 else (int(long_side / aspect), long_side)
    scale = model_size / long_side
    em_model = log_uniform(*em)
    img, polys, texts = page(rng, words, fonts_, w, h, lambda r: em_model(r) / scale,
                             one_style=rng.random() < 0.3)
    bg = img.getpixel((0, 0))
    if turns and rng.random() < 0.25:
        img, polys = rotate(img, polys, rng.choice([90, 180, 270]), bg)
    if rng.random() < 0.35:
        img, polys = rotate(img, polys, rng.uniform(-6, 6), bg)
    return img, polys, texts


EVAL_SIZES = [(850, 1100), (1100, 850), (1000, 800), (800, 1000), (1240, 1754)]


def eval_page(rng, words, fonts_):
    """A held-out page: one font per page (half of them held-out fonts), one size per page,
    ordinary word spacing. Returns image, polygons, words, font, size."""
    w, h = rng.choice(EVAL_SIZES)
    size = rng.randint(18, 34) * (1.4 if h > 1500 else 1.0)
    font = rng.choice(fonts_)
    img, polys, texts = page(rng, words, [font], w, h, lambda r: size, one_style=True, gap_em=(0.28, 0.6),
                             wide_gap_p=0.0, columns_p=0.0, rules_p=0.15, bg=(255, 255, 255))
    return img, polys, texts, font, int(size)
