"""Data for V-Zero: the Example record, loaders, the views z+ / z-, the synthetic "zoom world",
answer matching and the split across ranks.

Paper: V-Zero (arXiv 2606.25319), docs/method.md sec. 5 "Building the views". For each
prompt the student sees only x = (full image, question). The frozen teacher replays the
student's tokens twice: once with z+ (the crop of the annotated question-relevant box) and once
with z- (an equal-size crop of somewhere else). `evidence_views` is the one place that builds
(x's image, z+, z-); the trainer calls nothing else here per step.

Where the data comes from (`load_examples(spec)` dispatches on the spec string):
  "train.jsonl"       one JSON object per line: id, image, question, bbox [x0, y0, x1, y1] in
                      full-image pixels, optional answer / choices / neg_bbox
  "train.parquet"     the authors' release schema: prompt, images, teacher_images,
                      teacher_neg_images (crops precomputed, no box); needs `pip install pyarrow`
  "synthetic:N:SEED"  the zoom world below: N examples, deterministic in SEED

Answers and choices ride along for EVALUATION ONLY. No training code reads them: V-Zero is
answer-label-free (no answer enters the loss). `Example.without_answer()` makes that explicit.

Run `python data.py --out zoom_samples` to save a few zoom-world examples as sheets
[full canvas | what the student sees at 224 px | z+ | z-] and print their questions.
Pure PIL + numpy + stdlib on purpose: importing this file must stay fast (no torch).
"""

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image, ImageDraw, ImageOps

# An image source: a file path, encoded bytes, a PIL image, or a zero-argument function that
# returns a PIL image (the zoom world renders lazily that way: 1,000 canvases would be 600 MB).
ImageSource = Union[str, os.PathLike, bytes, Image.Image, Callable[[], Image.Image]]
Box = tuple[float, float, float, float]  # [x0, y0, x1, y1] in full-image pixels, x1 > x0, y1 > y0

NEG_MODES = ("paper", "downsample", "random", "blank")  # negative view z-, see negative_view
POS_MODES = ("box", "random")  # positive view z+: "random" is the paper's harmful ablation
NEG_TRIES = 64  # seeded random positions tried for the "paper" negative before falling back
# Qwen's chat-template tokens (<|im_end|>, <|image_pad|>, ...): never inside a question.
SPECIAL_TOKEN = re.compile(r"<\|[^|<>\s]+\|>")
# The release's image placeholder in a question ("<image>What is ...?"): every loader removes it
# (clean_question), since our template places the image itself, in one place (model.py).
PLACEHOLDER = "<image>"
MAX_ASPECT = 200  # Qwen's processors (smart_resize) reject an image whose long side is > 200x its short one
ORIENTATION = 0x0112  # the EXIF tag; 5-8 mean the displayed image is the stored one turned by 90 degrees


# -----------------------------------------------------------------------------
# The record

def _orientation(im) -> int:
    # The EXIF orientation (1 = as stored), from the header only: a PNG's getexif() decodes the whole
    # image to look for an eXIf chunk after the pixels, so for PNG only one before them counts (as
    # the browsers that honour it read it). Unreadable EXIF counts as 1, as viewers show it.
    try:
        if im.format == "PNG":
            exif = Image.Exif()
            exif.load(im.info.get("exif") or b"")
            return exif.get(ORIENTATION, 1)
        return im.getexif().get(ORIENTATION, 1)
    except Exception:
        return 1


class RejectedImage(ValueError):
    """An image the processor (or PIL) would refuse: found at load; --skip-bad-images keeps its
    example, which is then replaced by another prompt of its batch at each use, and counted."""


def clean_question(text):
    # The one rule for placeholders, in every loader: "<image>" marks where the release's template put
    # the image; ours places it itself, so the question keeps only its words.
    return text.replace(PLACEHOLDER, "").strip() if isinstance(text, str) else text


@dataclass
class Example:
    id: str  # unique within a dataset; also seeds this example's random negative crop
    question: str  # question text only; the chat template and wording live in model.py
    image_source: ImageSource  # the full image x; load it with the `.image` property
    bbox: Box | None = None  # question-relevant region -> z+; None only when pos_crop is given
    answer: str | None = None  # EVALUATION ONLY, never read by training
    choices: list[str] | None = None  # EVALUATION ONLY (chance level, answer matching)
    neg_bbox: Box | None = None  # optional explicit negative region for the "paper" mode
    pos_crop: ImageSource | None = None  # precomputed z+ (the release ships crops, not boxes)
    neg_crop: ImageSource | None = None  # precomputed z- (used by the "paper" mode)
    meta: dict = field(default_factory=dict)  # anything else a loader found (category, ...)
    source: str = ""  # where it was read: "train.jsonl line 12" (set by the loaders)

    def _error(self, name, problem, kind=ValueError):
        # Every data error names the file and line, the example and the field, so one bad row in
        # 23K is findable, also when it surfaces mid-run.
        where = f"{self.source}: " if self.source else ""
        return kind(f"{where}example {self.id}: field {name}: {problem}")

    def _open(self, name):
        # Open the source in field `name`; for files and bytes PIL reads only the header here.
        src = getattr(self, name)
        try:
            if isinstance(src, Image.Image):
                return src
            if isinstance(src, (bytes, str, os.PathLike)):
                return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
            if callable(src):
                return src()
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # missing, not an image, bad bytes, huge
            raise self._error(name, f"cannot read image: {e}") from None
        raise self._error(name, f"expected a path, bytes, PIL image or callable, got {type(src).__name__}")

    def _size(self, name) -> tuple[int, int]:
        # The DISPLAYED size, from the header: a phone photo stored landscape with EXIF
        # Orientation 6 is shown (and boxed by annotation tools) as portrait.
        im = self._open(name)
        turned = _orientation(im) in (5, 6, 7, 8)
        if im is not getattr(self, name):
            im.close()  # a file we opened: validating 23K rows must not keep 23K files open
        return im.size[::-1] if turned else im.size

    def _check_shape(self, name, W, H):
        # What the processor or PIL would refuse only after the models loaded, refused at load.
        if max(W, H) > MAX_ASPECT * min(W, H):
            raise self._error(name, f"{W}x{H} image: aspect ratio over {MAX_ASPECT}:1, which Qwen's processor "
                                    "rejects (crop or pad it; --skip-bad-images replaces it at each use)", RejectedImage)
        if Image.MAX_IMAGE_PIXELS and W * H > Image.MAX_IMAGE_PIXELS:
            raise self._error(name, f"{W}x{H} image: {W * H} pixels, beyond PIL's decompression-bomb limit "
                                    f"{Image.MAX_IMAGE_PIXELS} (downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS "
                                    "for files you trust)", RejectedImage)

    def _load(self, name) -> Image.Image:
        # As displayed (EXIF orientation applied: the box was drawn on what a viewer shows), RGB,
        # with the pixels' range kept (a 16-bit or float image is scaled, not clipped to white).
        im = self._open(name)
        self._check_shape(name, *im.size)
        try:  # decoding happens here, so a truncated file fails here, loudly
            if _orientation(im) != 1:
                im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba, im = im.convert("RGBA"), Image.new("RGB", im.size, (255, 255, 255))
                im.paste(rgba, mask=rgba.getchannel("A"))  # transparency onto white, as ZwZ's eval
            if im.mode.startswith("I") or im.mode == "F":  # I;16, I;16B, I (32-bit int), F (float)
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0  # PNG 16-bit opens as I
                top = 1.0 if im.mode == "F" and a.max() <= 1 else top
                im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
            return im.convert("RGB")
        except OSError as e:
            raise self._error(name, f"cannot decode image: {e}") from None

    @property
    def image(self) -> Image.Image:
        """The full image x as RGB, decoded on every access: not cached, since the decoded
        images of a real dataset do not fit in memory. Load it once per step."""
        return self._load("image_source")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the full image, read from the file header only."""
        return self._size("image_source")

    def without_answer(self) -> "Example":
        return dataclasses.replace(self, answer=None, choices=None)

    def validate(self) -> "Example":
        """Check the record: fields, boxes (they become tuples of floats), and images: header,
        and a file cut short (see `_check_complete`); boxes become tuples of floats."""
        if not isinstance(self.id, str) or not self.id.strip():
            raise self._error("id", "must be a non-empty string")
        if not isinstance(self.question, str) or not self.question.strip():
            raise self._error("question", "empty")
        special = SPECIAL_TOKEN.search(self.question)
        if special:   # tokenised as that token: <|im_end|> would close the user turn in the middle
            raise self._error("question", f"holds {special.group()!r}, a special token of the chat template")
        W, H = self.size
        for name in ("bbox", "neg_bbox"):
            if getattr(self, name) is not None:
                setattr(self, name, self._check_box(name, getattr(self, name), W, H))
        for name in ("image_source", "pos_crop", "neg_crop"):
            if getattr(self, name) is not None:
                self._check_complete(name)
        if self.answer is not None and not isinstance(self.answer, str):
            raise self._error("answer", f"must be a string, got {type(self.answer).__name__}")
        if self.choices is not None and not (isinstance(self.choices, list) and self.choices
                                             and all(isinstance(c, str) and c for c in self.choices)):
            raise self._error("choices", "must be a non-empty list of non-empty strings")
        for name in ("image_source", "pos_crop", "neg_crop"):     # last: --skip-bad-images keeps the rest checked
            if getattr(self, name) is not None:
                self._check_shape(name, *self._size(name))
        return self

    def _check_complete(self, name):
        # A file cut short (a failed copy) must fail here, not hours into a run. PNG: PIL checks
        # every chunk's CRC up to IEND without decoding. JPEG: the end-of-image marker must be
        # there (a truncated JPEG lacks it). Other formats: decoded once. Pixel errors inside a
        # complete file surface when the image is used, still naming file, line, id and field.
        src = getattr(self, name)
        if not isinstance(src, (bytes, str, os.PathLike)):
            return      # a PIL image or a renderer (the zoom world): nothing to read
        im = self._open(name)
        try:
            if im.format == "PNG":
                im.verify()
            elif im.format == "JPEG":
                if isinstance(src, bytes):
                    tail = src[-64:]
                else:
                    with open(src, "rb") as f:
                        f.seek(max(0, os.path.getsize(src) - 64))
                        tail = f.read()
                if b"\xff\xd9" not in tail:
                    raise OSError("the JPEG data ends before its end-of-image marker (a truncated file)")
            else:
                im.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise self._error(name, f"cannot decode image: {e}") from None
        finally:
            im.close()

    def _check_box(self, name, box, W, H) -> Box:
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise self._error(name, f"must be 4 numbers [x0, y0, x1, y1], got {box!r}") from None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise self._error(name, f"not finite: {box!r}")
        if x1 <= x0 or y1 <= y0:
            raise self._error(name, f"zero-area or inverted box {box!r} (need x1 > x0 and y1 > y0)")
        convention = (f"boxes are [x0, y0, x1, y1] in pixels of the image as displayed (EXIF orientation "
                      f"applied), here {W}x{H}")
        if max(x1, y1) <= 1 and min(W, H) > 2:
            raise self._error(name, f"box {box!r} looks normalised to 0-1: {convention}; convert with "
                                    "[x0 * W, y0 * H, x1 * W, y1 * H]")
        if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
            scaled = " (0-1000 normalised? convert with [x0 * W / 1000, y0 * H / 1000, ...])" if max(x1, y1) <= 1000 else ""
            raise self._error(name, f"box {box!r} lies outside the {W}x{H} image: {convention}{scaled}")
        return (x0, y0, x1, y1)


# -----------------------------------------------------------------------------
# The views (sec. 5). All crops are taken at the full image's native resolution; the teacher's
# image processor later resizes them (a small crop gets upscaled: that is the "zoom").

def downsample(img: Image.Image, factor: int = 2) -> Image.Image:
    # The release's exact operation: bicubic resize to (w // factor, h // factor).
    return img.resize((max(1, img.width // factor), max(1, img.height // factor)), Image.BICUBIC)


def _rng(seed: int, ex_id: str, tag: str) -> np.random.Generator:
    # A stable per-example stream: Python's hash() is salted per process, so every torchrun rank
    # and every rerun would pick different negatives. sha256 is the same everywhere.
    digest = hashlib.sha256(f"{seed}|{tag}|{ex_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _pos_window(ex: Example, W: int, H: int, margin: float, min_side: int) -> tuple[int, int, int, int]:
    # Integer crop window [x0, y0, x1, y1] for z+: the box plus `margin` (a fraction of the box's
    # width / height on each side), clamped to the image, then grown around its centre to at
    # least min_side px per side (shifted, not shrunk, at the borders) so a 6-px box still gives
    # the teacher a usable crop (V*'s own reference crops use a 224-px floor).
    if ex.bbox is None:
        raise ex._error("bbox", "needed to build the positive view (or give pos_crop)")
    x0, y0, x1, y1 = ex.bbox
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    win = [max(0, math.floor(x0 - mx)), max(0, math.floor(y0 - my)),
           min(W, math.ceil(x1 + mx)), min(H, math.ceil(y1 + my))]
    for lo, hi, L in ((0, 2, W), (1, 3, H)):
        side = min(min_side, L)
        if win[hi] - win[lo] < side:
            start = round((win[lo] + win[hi]) / 2 - side / 2)
            win[lo] = min(max(start, 0), L - side)
            win[hi] = win[lo] + side
    return tuple(win)


def _fit(img: Image.Image, window, size) -> Image.Image:
    # Crop `window`; if the window had to be clamped smaller than `size` (a crop bigger than the
    # image it is taken from), resize up so z- always has z+'s pixel size: then the teacher's
    # positive and negative prompts get the same number of visual tokens.
    crop = img.crop(window)
    return crop if crop.size == tuple(size) else crop.resize(size, Image.BICUBIC)


def _random_crop(full: Image.Image, size, rng) -> Image.Image:
    # A crop of `size` at a uniformly random place; it may overlap the evidence by chance.
    w, h = min(size[0], full.width), min(size[1], full.height)
    x, y = int(rng.integers(0, full.width - w + 1)), int(rng.integers(0, full.height - h + 1))
    return _fit(full, (x, y, x + w, y + h), size)


def _paper_window(W, H, w, h, box, rng) -> tuple[int, int, int, int]:
    # Where to take z- in the 2x-downsampled image (size W x H; `box` already scaled to it).
    # Rejection sampling: NEG_TRIES uniform positions, keep the first that does not overlap the
    # box (uniform over all valid positions). If none does, take the least-overlapping one among
    # the tries and the 4 corner positions. Overlap area is a product of two 1-D overlaps, each
    # smallest at an extreme position, so the best corner is the exact least-overlap window and
    # any valid window, if one exists, is found.
    w, h = min(w, W), min(h, H)
    xs = np.concatenate([rng.integers(0, W - w + 1, NEG_TRIES), [0, W - w, 0, W - w]])
    ys = np.concatenate([rng.integers(0, H - h + 1, NEG_TRIES), [0, 0, H - h, H - h]])
    ox = np.clip(np.minimum(xs + w, box[2]) - np.maximum(xs, box[0]), 0, None)
    oy = np.clip(np.minimum(ys + h, box[3]) - np.maximum(ys, box[1]), 0, None)
    i = int(np.argmin(ox * oy))  # argmin returns the FIRST minimum: the first clean random try
    return (int(xs[i]), int(ys[i]), int(xs[i]) + w, int(ys[i]) + h)


def _positive(ex: Example, full: Image.Image, margin: float, min_side: int) -> Image.Image:
    if ex.pos_crop is not None:
        return ex._load("pos_crop")
    return full.crop(_pos_window(ex, full.width, full.height, margin, min_side))


def _negative(ex: Example, full: Image.Image, pos: Image.Image, mode: str, seed: int) -> Image.Image:
    if mode == "paper":
        if ex.neg_crop is not None:  # the release's precomputed hard negative
            return ex._load("neg_crop")
        if ex.neg_bbox is not None:  # a user-given region, read at z+'s pixel size
            x0, y0, x1, y1 = ex.neg_bbox
            return _fit(full, (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)), pos.size)
        if ex.bbox is None:
            raise ex._error("bbox", "needed to sample the paper negative (or give neg_crop / neg_bbox)")
        # Sec. 5: downsample the full image 2x, then crop z+'s pixel size away from the box. The
        # crop thus covers a 2x larger region of the scene at half the detail.
        half = downsample(full, 2)
        sx, sy = half.width / full.width, half.height / full.height
        box = (ex.bbox[0] * sx, ex.bbox[1] * sy, ex.bbox[2] * sx, ex.bbox[3] * sy)
        win = _paper_window(half.width, half.height, *pos.size, box, _rng(seed, ex.id, "paper"))
        return _fit(half, win, pos.size)
    if mode == "downsample":
        # The release's `downsample_teacher_crop` (its config's default; its launcher uses the
        # precomputed hard negatives, our "paper"): z- = the SAME crop at half size
        # (w//2 x h//2, bicubic): same content, less detail, so Delta measures how much a token
        # depends on fine detail. The release halves the negative prompt's full image too; we
        # keep one full image for both prompts (they differ only in the crop, sec. 5). For the
        # release's exact context, give the negative prompt downsample(full) instead.
        return downsample(pos, 2)
    if mode == "random":  # an uninformed negative: z+'s size anywhere in the full image
        return _random_crop(full, pos.size, _rng(seed, ex.id, "random"))
    if mode == "blank":
        return Image.new("RGB", pos.size, (128, 128, 128))  # no evidence at all: a sanity floor
    raise ex._error("neg_mode", f"unknown negative-view mode {mode!r}; choose from {NEG_MODES}")


def positive_view(ex: Example, *, margin: float = 0.0, min_side: int = 32) -> Image.Image:
    """z+: the crop of ex.bbox (or ex.pos_crop when the data ships it precomputed)."""
    return _positive(ex, ex.image, margin, min_side)


def negative_view(ex: Example, mode: str = "paper", *, seed: int = 0, margin: float = 0.0,
                  min_side: int = 32) -> Image.Image:
    """z-, deterministic in (seed, ex.id).
    paper:      the paper's rule: ex.neg_crop as shipped, else ex.neg_bbox, else a crop of z+'s
                pixel size from the 2x-downsampled image, away from the box
    downsample: the release's other mode: z+ itself at half size
    random:     a crop of z+'s size at a random place in the full image (may hit the evidence)
    blank:      a mid-grey image of z+'s size"""
    full = ex.image
    return _negative(ex, full, _positive(ex, full, margin, min_side), mode, seed)


def evidence_views(ex: Example, neg_mode: str = "paper", *, pos_mode: str = "box", seed: int = 0,
                   margin: float = 0.0, min_side: int = 32) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(full, z+, z-) for one example: the student's image and the teacher's two crops.
    pos_mode="random" is the paper's random-crop ablation, which hurts (72.5 vs 75.3 for the
    base model, docs/method.md sec. 5): the teacher's "positive" crop is taken at a random place
    (z+'s size, uniform, blind to the box), so it is no longer the evidence. z- is built as
    usual ("paper" still avoids the real box)."""
    full = ex.image
    pos = _positive(ex, full, margin, min_side)
    if pos_mode == "random":
        pos = _random_crop(full, pos.size, _rng(seed, ex.id, "random-positive"))
    elif pos_mode != "box":
        raise ex._error("pos_mode", f"unknown positive-view mode {pos_mode!r}; choose from {POS_MODES}")
    return full, pos, _negative(ex, full, pos, neg_mode, seed)


def check_views(examples: list[Example], neg_mode: str = "paper") -> None:
    """Training needs z+ and z- for every example: refuse, at load time, one that cannot have them
    (a row without bbox fails here, not when a step first samples it)."""
    for ex in examples:
        if ex.bbox is None and ex.pos_crop is None:
            raise ex._error("bbox", "needed to build the positive view z+ (or give pos_crop)")
        if neg_mode == "paper" and ex.bbox is None and ex.neg_crop is None and ex.neg_bbox is None:
            raise ex._error("bbox", "needed to build the paper's negative view z- (or give neg_crop / neg_bbox)")


# -----------------------------------------------------------------------------
# Loaders. Both read every row, validate it, and report the file and line / row on error.

def _collect(path: Path, rows, skip_bad_images=False) -> list[Example]:
    # rows: (where, build) pairs, build() -> Example. Shared by both loaders.
    examples, seen, rejected = [], set(), []
    for where, build in rows:
        try:
            ex = build()
            ex.source = f"{path} {where}"
            ex.question = clean_question(ex.question)
            if ex.id in seen:
                raise ex._error("id", "duplicate id (ids seed the negative views)")
            try:
                ex.validate()
            except RejectedImage as e:
                if not skip_bad_images:
                    raise
                rejected.append(e)
        except ValueError as e:
            message = str(e)
            raise ValueError(message if message.startswith(f"{path} {where}") else f"{path} {where}: {message}") from None
        seen.add(ex.id)
        examples.append(ex)
    if not examples:
        raise ValueError(f"{path}: no examples")
    if rejected:
        print(f"warning: {len(rejected)} images the processor would reject, replaced at each use and counted "
              f"(data/bad_images; --skip-bad-images); the first: {rejected[0]}")
    return examples


_JSONL_KEYS = ("id", "image", "question", "bbox", "answer", "choices", "neg_bbox")


def load_jsonl(path, skip_bad_images=False) -> list[Example]:
    """One object per line: {"id", "image" (relative to this file's folder, or absolute),
    "question", "bbox": [x0, y0, x1, y1], optional "answer", "choices", "neg_bbox"}. Training
    needs "bbox" (the views fail loudly without it); evaluation-only files may omit it.
    Other keys are kept in Example.meta. Blank lines are skipped."""
    path = Path(path)

    def build(line):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        for key in ("id", "image", "question"):
            if row.get(key) is None:
                raise ValueError(f"example {row.get('id', '?')}: field {key}: missing")
        if not isinstance(row["image"], str):
            raise ValueError(f"example {row['id']}: field image: must be a path string")
        return Example(
            id=str(row["id"]), question=row["question"],
            image_source=str(path.parent / row["image"]),  # an absolute image path stays as it is
            bbox=row.get("bbox"), neg_bbox=row.get("neg_bbox"), choices=row.get("choices"),
            answer=None if row.get("answer") is None else str(row["answer"]),  # 3 -> "3"
            meta={k: v for k, v in row.items() if k not in _JSONL_KEYS})

    with open(path, encoding="utf-8") as f:
        rows = [(f"line {n}", partial(build, line)) for n, line in enumerate(f, 1) if line.strip()]
    return _collect(path, rows, skip_bad_images)


def _question_text(prompt) -> str:
    # The release's `prompt` is a chat list [{"role": "user", "content": "<image>What ...?"}]
    # (content may also be a list of {"type": "text"/"image", ...} parts) or a plain string.
    # We keep only the question: our own template adds the images, in one place (model.py).
    if isinstance(prompt, list):
        user = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = (user or prompt or [""])[-1]
        prompt = prompt.get("content", "") if isinstance(prompt, dict) else prompt
    if isinstance(prompt, list):
        prompt = "\n".join(p.get("text") or "" for p in prompt
                           if isinstance(p, dict) and p.get("type") == "text")
    return prompt if isinstance(prompt, str) else ""          # "<image>" goes in clean_question


def load_parquet(path, skip_bad_images=False) -> list[Example]:
    """The authors' release schema: `prompt` (chat list or string), `images` ([full image]),
    `teacher_images` ([full image, positive crop]), `teacher_neg_images` ([full image, negative
    crop]), optional `reward_model` {"ground_truth"} (-> answer, eval only) and `extra_info`
    {"index"} (-> id). Images are {bytes, path} structs or raw bytes. The crops come
    precomputed, so these examples have pos_crop / neg_crop and no bbox. The release's
    teacher_raw_prompt columns are ignored: our teacher wording lives in one place (model.py)."""
    try:
        import pyarrow.parquet as pq  # optional dependency: only this loader needs it
    except ImportError:
        raise ImportError("load_parquet needs pyarrow, which is not installed: pip install pyarrow") from None
    path = Path(path)
    table = pq.read_table(path)
    for col in ("prompt", "images"):
        if col not in table.column_names:
            raise ValueError(f"{path}: column {col} missing; the release schema has prompt, images, "
                             f"teacher_images, teacher_neg_images (found {table.column_names})")

    def build(n, row):
        extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
        ids = [str(v) for v in (row.get("id"), extra.get("index")) if v is not None]
        ex_id = ids[0] if ids else f"{path.stem}-{n}"
        sources = {}
        for name, col in (("image_source", "images"), ("pos_crop", "teacher_images"),
                          ("neg_crop", "teacher_neg_images")):
            items = row.get(col)
            items = items if isinstance(items, list) else [] if items is None else [items]
            if not items:
                if col == "images":
                    raise ValueError(f"example {ex_id}: field images: empty")
                continue
            item = items[0] if col == "images" else items[-1]  # teacher_*: [full, crop] -> the crop
            if isinstance(item, dict):  # a {bytes, path} struct: bytes if present, else the path
                item = item.get("bytes") or item.get("path")
            if not isinstance(item, (bytes, str)):
                raise ValueError(f"example {ex_id}: field {col}: no image bytes or path")
            sources[name] = item if isinstance(item, bytes) else str(path.parent / item)
        reward = row.get("reward_model")
        answer = reward.get("ground_truth") if isinstance(reward, dict) else None
        return Example(id=ex_id, question=_question_text(row["prompt"]),
                       answer=None if answer is None else str(answer), **sources)

    rows = table.to_pylist()  # every row, images included, as Python objects
    return _collect(path, [(f"row {n}", partial(build, n, row)) for n, row in enumerate(rows)], skip_bad_images)


def load_examples(spec, skip_bad_images=False) -> list[Example]:
    """"*.jsonl", "*.parquet" or "synthetic:N:SEED" -> validated examples. skip_bad_images: keep
    (and report) examples whose image the processor would reject, for the trainer to replace."""
    spec = str(spec)
    if spec.startswith("synthetic:"):
        parts = spec.split(":")
        if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts[1:]):
            raise ValueError(f"bad data spec {spec!r}: expected synthetic:N:SEED, e.g. synthetic:512:0")
        return synthetic(int(parts[1]), int(parts[2]))
    if spec.endswith(".jsonl"):
        return load_jsonl(spec, skip_bad_images)
    if spec.endswith(".parquet"):
        return load_parquet(spec, skip_bad_images)
    raise ValueError(f"unknown data spec {spec!r}: expected *.jsonl, *.parquet or synthetic:N:SEED")


def identity(spec) -> dict:
    """The data file's identity, saved with a run's settings: {path: "<bytes> bytes, crc32 <hex>"}
    ({} for synthetic data, which its spec defines). A file changed between a stop and a --resume
    (rows appended, edited) then refuses the resume, naming the file: the steps after it would
    differ from a run on the unchanged file. The images a JSONL names are not hashed (a dataset
    has 10^4-10^5 of them); the parquet holds its images, so they are."""
    spec = str(spec)
    if spec.startswith("synthetic:"):
        return {}
    crc = 0
    with open(spec, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return {os.path.abspath(spec): f"{os.path.getsize(spec)} bytes, crc32 {crc:08x}"}


# -----------------------------------------------------------------------------
# The zoom world: a synthetic fine-grained task where zooming helps.
# A 448x448 cluttered canvas (smooth colour field, pixel noise, blobs, decoy framed squares)
# holds one target: a 24 px square (5% of the side), the ONLY one with a red frame. A tiny
# glyph is drawn in its centre (a 5x5 bitmap, 1 px per cell); the question asks which of 4
# shapes it is. The student's processor sees the canvas at about 224 px, where the red frame is
# still visible but the glyph is 2.5 px: blurred and faint, yet still there (a student CAN learn
# it). The teacher's z+ (the box grown to 32 px, upscaled by its processor) shows it crisply.
# tests/test_data.py measures it: a nearest-class-mean template reads the glyph on z+ ~100% of
# the time, on the 224 px canvas ~60% (chance 25%); a reader that also knows the sub-pixel
# alignment still gets ~100% at 224 px, so the information is there, only hard to use.

GLYPHS = {  # 5x5 bitmaps; plus, cross and dot have the same ink, so brightness alone does not tell
    "plus": ("..#..", "..#..", "#####", "..#..", "..#.."),
    "cross": ("#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
    "ring": ("#####", "#...#", "#...#", "#...#", "#####"),
    "dot": (".....", ".###.", ".###.", ".###.", "....."),
    "tee": ("#####", "..#..", "..#..", "..#..", "..#.."),
    "ell": ("#....", "#....", "#....", "#....", "#####"),
}
MARKER = (220, 30, 30)  # the target's frame colour; PALETTE (the distractors) has no red
PALETTE = [(40, 90, 220), (40, 170, 60), (230, 210, 40), (40, 200, 210), (170, 70, 200),
           (240, 240, 240), (30, 30, 30), (130, 130, 130), (120, 80, 40), (250, 150, 200)]


def _zoom_layout(seed: int, i: int, k: dict):
    # Everything but the pixels, cheap and deterministic in (seed, i): the label and the draw
    # list of (kind, [x0, y0, x1, y1) box, frame/fill colour, glyph), the target last.
    rng = np.random.default_rng([seed, i])
    classes, S, t = k["classes"], k["canvas"], k["target_size"]
    K = len(classes)
    # Balanced labels that do not depend on n: each block of K consecutive examples holds
    # every class once, in a seeded order.
    label = classes[np.random.default_rng([seed, i // K, 1]).permutation(K)[i % K]]
    x, y = (int(v) for v in rng.integers(4, S - t - 4, 2))
    objects = []
    for _ in range(k["n_distractors"]):
        s = int(rng.integers(2 * t // 3, 3 * t // 2 + 1))
        ox, oy = (int(v) for v in rng.integers(0, S - s, 2))
        kind = ("framed", "ellipse", "rect")[int(rng.integers(3))]  # framed = a decoy, not red
        colour, glyph = PALETTE[int(rng.integers(len(PALETTE)))], classes[int(rng.integers(K))]
        if not (ox < x + t + 4 and x - 4 < ox + s and oy < y + t + 4 and y - 4 < oy + s):
            objects.append((kind, (ox, oy, ox + s, oy + s), colour, glyph))  # clear of the target
    return label, objects + [("framed", (x, y, x + t, y + t), MARKER, label)]


def _zoom_render(seed: int, i: int, k: dict) -> Image.Image:
    _, objects = _zoom_layout(seed, i, k)
    rng = np.random.default_rng([seed, i, 2])  # colours and noise: a stream apart from the layout
    S, gp, fw = k["canvas"], k["glyph_px"], max(2, k["target_size"] // 12)  # 2 px frame: 1 px at 224
    img = Image.fromarray(rng.integers(60, 200, (3, 3, 3), dtype=np.uint8)).resize((S, S), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for kind, (x0, y0, x1, y1), colour, glyph in objects:
        box = (x0, y0, x1 - 1, y1 - 1)  # PIL's boxes include their last pixel
        if kind != "framed":
            (draw.ellipse if kind == "ellipse" else draw.rectangle)(box, fill=colour)
            continue
        fill = rng.integers(170, 236, 3)  # light interior, glyph `contrast` levels darker
        ink = tuple(int(v) for v in np.clip(fill - k["contrast"] + rng.integers(-15, 16, 3), 0, 255))
        draw.rectangle(box, fill=tuple(int(v) for v in fill), outline=colour, width=fw)
        gx, gy = (x0 + x1 - 5 * gp) // 2, (y0 + y1 - 5 * gp) // 2  # glyph centred in the square
        for r, row in enumerate(GLYPHS[glyph]):
            for c, cell in enumerate(row):
                if cell == "#":
                    x, y = gx + c * gp, gy + r * gp
                    draw.rectangle((x, y, x + gp - 1, y + gp - 1), fill=ink)
    a = round(k["noise"] * 3 ** 0.5)  # uniform noise in [-a, a] has std ~noise; 3x cheaper than normal
    noisy = np.asarray(img, np.int16) + rng.integers(-a, a + 1, (S, S, 3), dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def synthetic(n: int, seed: int = 0, *, canvas: int = 448, target_size: int = 24, glyph_px: int = 1,
              n_distractors: int = 16, noise: float = 12.0, contrast: int = 180,
              classes: tuple[str, ...] = ("plus", "cross", "ring", "dot")) -> list[Example]:
    """n zoom-world examples, deterministic in seed (example i is the same for every n); pixels
    are rendered on each `.image` access (~8 ms). Use different seeds for train and held-out
    splits. Knobs, in pixels unless said: canvas side, target_size, glyph_px (per glyph cell;
    the student sees glyph_px * canvas / 224 of a pixel per cell), n_distractors (about a third
    each blobs, rectangles and decoy framed squares; those touching the target are left out),
    noise (std, 0-255 scale), contrast (glyph vs interior, 0-255), classes (names in GLYPHS)."""
    if n < 1 or seed < 0:
        raise ValueError(f"synthetic: need n >= 1 and seed >= 0, got n={n}, seed={seed}")
    if len(classes) < 2 or any(c not in GLYPHS for c in classes):
        raise ValueError(f"synthetic: classes must be 2+ of {sorted(GLYPHS)}, got {classes}")
    if 5 * glyph_px + 2 * max(2, target_size // 12) > target_size or target_size + 8 > canvas:
        raise ValueError(f"synthetic: the glyph ({5 * glyph_px} px) must fit the target "
                         f"({target_size} px) and the target the canvas ({canvas} px)")
    k = dict(canvas=canvas, target_size=target_size, glyph_px=glyph_px, n_distractors=n_distractors,
             noise=noise, contrast=contrast, classes=tuple(classes))
    question = ("Which symbol is inside the small square with the red frame? Answer with one word: "
                + ", ".join(classes[:-1]) + f", or {classes[-1]}.")
    examples = []
    for i in range(n):
        label, objects = _zoom_layout(seed, i, k)
        examples.append(Example(id=f"zoom-s{seed}-{i:06d}", question=question,
                                image_source=partial(_zoom_render, seed, i, k),
                                bbox=tuple(float(v) for v in objects[-1][1]),  # the target's box
                                answer=label, choices=list(classes)))
    return examples


def chance_accuracy(examples: list[Example]) -> float:
    """Expected accuracy of guessing uniformly among each example's choices (0.25 in the zoom world)."""
    for ex in examples:
        if not ex.choices:
            raise ex._error("choices", "needed for chance accuracy")
    return sum(1 / len(ex.choices) for ex in examples) / len(examples)


def match_choice(text: str, choices: list[str]) -> str | None:
    """The choice a response names: the one whose first whole-word, case-insensitive occurrence
    comes earliest ("It is a cross." -> "cross"), or None. For word answers like the zoom
    world's; the benchmarks' letter choices have their own rules (answer_rules.py)."""
    hits = [(m.start(), c) for c in choices
            if (m := re.search(rf"(?<!\w){re.escape(c)}(?!\w)", text, re.IGNORECASE))]
    return min(hits)[1] if hits else None


# -----------------------------------------------------------------------------
# Distributed split

def shard(examples: list[Example], rank: int, world_size: int, *, drop_last: bool = True) -> list[Example]:
    """This rank's share, strided (rank, rank + world_size, ...), the same on every run.
    drop_last=True (training): first drop the last len % world_size examples, so every rank has
    the same count and so the same number of steps (a rank with one batch fewer would hang the
    others in the gradient all-reduce). At most world_size - 1 examples are dropped; shuffle
    before sharding if that matters. drop_last=False (evaluation): every example exactly once,
    counts differ by at most one across ranks."""
    if not 0 <= rank < world_size:
        raise ValueError(f"shard: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    n = len(examples) - len(examples) % world_size if drop_last else len(examples)
    if n == 0:
        raise ValueError(f"shard: {len(examples)} examples cannot fill {world_size} ranks")
    return examples[rank:n:world_size]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Save zoom-world sheets [full | student 224 px | z+ | z-].")
    ap.add_argument("--out", default="zoom_samples")
    ap.add_argument("-n", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neg-mode", default="paper", choices=NEG_MODES)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    examples = synthetic(args.n, args.seed)
    for ex in examples:
        full, pos, neg = evidence_views(ex, args.neg_mode, seed=args.seed)
        sheet = Image.new("RGB", (4 * 448 + 24, 448), (255, 255, 255))
        for j, view in enumerate([full, full.resize((224, 224), Image.BICUBIC), pos, neg]):
            sheet.paste(view.resize((448, 448), Image.NEAREST), (j * 456, 0))  # NEAREST: real pixels
        sheet.save(os.path.join(args.out, f"{ex.id}.png"))
        print(f"{ex.id}  bbox={ex.bbox}  answer={ex.answer}")
    print(f"question: {examples[0].question}")
    print(f"chance accuracy {chance_accuracy(examples):.2f}; sheets in {args.out}/")
