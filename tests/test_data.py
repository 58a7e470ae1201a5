"""Tests for data.py: the views of sec. 5, input validation, loaders, the zoom world, sharding.

Run: python -m pytest -q tests/test_data.py   (CPU only, a few seconds; no torch needed)
"""

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
from data import Example  # noqa: E402


def noise_image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def coord_image(w, h):
    # Every pixel unique: R = x, G = y, B = random, so a crop can be located exactly.
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0], a[..., 1] = np.arange(w)[None, :], np.arange(h)[:, None]
    a[..., 2] = np.random.default_rng(1).integers(0, 256, (h, w))
    return Image.fromarray(a)


def locate(big: Image.Image, small: Image.Image):
    # (x, y) where `small` sits in `big` pixel for pixel, or None.
    B, S = np.asarray(big), np.asarray(small)
    h, w = S.shape[:2]
    for y, x in zip(*np.nonzero((B[: B.shape[0] - h + 1, : B.shape[1] - w + 1] == S[0, 0]).all(-1))):
        if np.array_equal(B[y:y + h, x:x + w], S):
            return int(x), int(y)
    return None


def overlap(a, b):
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def ex_on(img, bbox, id="ex", **kw):
    return Example(id=id, question="What is there?", image_source=img, bbox=bbox, **kw)


# ----------------------------------------------------------------------------- positive view

def test_positive_crop_is_exactly_the_box():
    img = noise_image(120, 90)
    pos = data.positive_view(ex_on(img, (10, 20, 60, 70)), min_side=1)
    assert np.array_equal(np.asarray(pos), np.asarray(img)[20:70, 10:60])


def test_margin_adds_a_fraction_of_the_box_and_clamps():
    img = noise_image(100, 100)
    pos = data.positive_view(ex_on(img, (40, 40, 60, 60)), margin=0.5, min_side=1)
    assert np.array_equal(np.asarray(pos), np.asarray(img)[30:70, 30:70])
    pos = data.positive_view(ex_on(img, (0, 80, 20, 100)), margin=0.5, min_side=1)
    assert np.array_equal(np.asarray(pos), np.asarray(img)[70:100, 0:30])  # clamped at the edges


def test_min_side_grows_tiny_boxes_around_their_centre():
    img = noise_image(100, 80)
    pos = data.positive_view(ex_on(img, (50, 40, 56, 44)), min_side=32)
    assert pos.size == (32, 32)
    assert locate(img, pos) == (37, 26)  # centre (53, 42) kept
    pos = data.positive_view(ex_on(img, (0, 76, 4, 80)), min_side=32)  # in a corner: shifted inside
    assert pos.size == (32, 32) and locate(img, pos) == (0, 48)
    pos = data.positive_view(ex_on(noise_image(20, 50), (5, 5, 8, 8)), min_side=32)
    assert pos.size == (20, 32)  # never bigger than the image


# ----------------------------------------------------------------------------- negative views

def test_paper_negative_same_size_away_from_the_box():
    full = coord_image(240, 200)
    half = data.downsample(full, 2)
    box = (100, 80, 140, 120)
    for i in range(20):  # 20 ids = 20 different random draws
        ex = ex_on(full, box, id=f"ex{i}")
        pos, neg = data.positive_view(ex), data.negative_view(ex, "paper")
        assert neg.size == pos.size == (40, 40)
        x, y = locate(half, neg)
        window = (2 * x, 2 * y, 2 * (x + 40), 2 * (y + 40))  # back in full-image pixels
        assert overlap(window, box) == 0, (i, window)


def test_paper_negative_is_deterministic_per_example_and_seed():
    full = noise_image(300, 300)
    a, b = ex_on(full, (100, 100, 140, 140), id="a"), ex_on(full, (100, 100, 140, 140), id="b")
    n = np.asarray(data.negative_view(a))
    assert np.array_equal(n, np.asarray(data.negative_view(a)))
    assert not np.array_equal(n, np.asarray(data.negative_view(b)))
    assert not np.array_equal(n, np.asarray(data.negative_view(a, seed=1)))


def test_negative_is_the_same_in_another_process():
    # Python's hash() is salted per process; the negative must not depend on it (torchrun ranks).
    code = ("import hashlib, data; ex = data.synthetic(1, 0)[0]; "
            "print(hashlib.md5(data.negative_view(ex).tobytes()).hexdigest())")
    here = hashlib.md5(data.negative_view(data.synthetic(1, 0)[0]).tobytes()).hexdigest()
    for hashseed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": hashseed}, check=True)
        assert out.stdout.strip() == here


def test_paper_fallback_when_the_box_covers_almost_everything():
    full = noise_image(200, 200)
    ex = ex_on(full, (5, 5, 195, 195))
    pos, neg = data.positive_view(ex), data.negative_view(ex)
    # z+ (190 px) is bigger than the half image (100 px): the whole half image, resized to z+'s size
    assert neg.size == pos.size == (190, 190)
    whole = data.downsample(full).resize((190, 190), Image.BICUBIC)
    assert np.array_equal(np.asarray(neg), np.asarray(whole))
    # z+ fits but cannot avoid the box: the least-overlapping window (the bottom one) is taken
    ex = ex_on(full, (50, 50, 150, 110))
    assert locate(data.downsample(full), data.negative_view(ex)) == (0, 40)


def test_paper_window_finds_the_least_overlap_exactly():
    rng = np.random.default_rng(0)
    for _ in range(200):
        W, H = (int(v) for v in rng.integers(10, 60, 2))
        w, h = int(rng.integers(1, W + 1)), int(rng.integers(1, H + 1))
        x0, y0 = rng.uniform(0, W - 1), rng.uniform(0, H - 1)
        box = (x0, y0, rng.uniform(x0 + 0.5, W), rng.uniform(y0 + 0.5, H))
        best = min(overlap((x, y, x + w, y + h), box) for x in range(W - w + 1) for y in range(H - h + 1))
        assert overlap(data._paper_window(W, H, w, h, box, rng), box) == pytest.approx(best)


def test_every_negative_mode():
    full = coord_image(200, 160)
    ex = ex_on(full, (20, 30, 60, 70))
    pos = data.positive_view(ex)
    views = {mode: data.negative_view(ex, mode) for mode in data.NEG_MODES}
    assert all(v.mode == "RGB" for v in views.values())
    assert views["paper"].size == views["random"].size == views["blank"].size == pos.size
    assert np.all(np.asarray(views["blank"]) == 128)
    assert np.array_equal(np.asarray(views["downsample"]), np.asarray(data.downsample(pos)))
    assert views["downsample"].size == (20, 20)
    assert locate(full, views["random"]) is not None  # a real crop of the full image
    with pytest.raises(ValueError, match=r"example ex: field neg_mode: .*'fancy'"):
        data.negative_view(ex, "fancy")


def test_evidence_views_and_the_random_positive_ablation():
    full = noise_image(300, 200)
    ex = ex_on(full, (200, 20, 240, 60))
    f, pos, neg = data.evidence_views(ex, "paper")
    assert np.array_equal(np.asarray(f), np.asarray(full))
    assert np.array_equal(np.asarray(pos), np.asarray(data.positive_view(ex)))
    assert np.array_equal(np.asarray(neg), np.asarray(data.negative_view(ex)))
    _, rpos, rneg = data.evidence_views(ex, "paper", pos_mode="random")
    assert rpos.size == pos.size and not np.array_equal(np.asarray(rpos), np.asarray(pos))
    assert locate(full, rpos) is not None  # somewhere else in the same image
    assert np.array_equal(np.asarray(rneg), np.asarray(neg))  # z- still avoids the real box
    with pytest.raises(ValueError, match=r"example ex: field pos_mode"):
        data.evidence_views(ex, "paper", pos_mode="crop")


def test_precomputed_crops_and_neg_bbox():
    full, pc, nc = noise_image(100, 100, 0), noise_image(30, 20, 1), noise_image(30, 20, 2)
    ex = Example(id="p", question="q?", image_source=full, pos_crop=pc, neg_crop=nc).validate()
    assert np.array_equal(np.asarray(data.positive_view(ex)), np.asarray(pc))
    assert np.array_equal(np.asarray(data.negative_view(ex, "paper")), np.asarray(nc))
    assert data.negative_view(ex, "downsample").size == (15, 10)
    ex = ex_on(full, (10, 10, 50, 50), neg_bbox=(50, 50, 90, 90))
    assert np.array_equal(np.asarray(data.negative_view(ex)), np.asarray(full)[50:90, 50:90])
    ex = ex_on(full, (10, 10, 50, 50), neg_bbox=(50, 50, 70, 70))  # read at z+'s pixel size
    assert data.negative_view(ex).size == (40, 40)
    with pytest.raises(ValueError, match=r"example nobox: field bbox"):
        data.positive_view(Example(id="nobox", question="q?", image_source=full))


# ----------------------------------------------------------------------------- validation

PNG = io.BytesIO()
noise_image(100, 100).save(PNG, format="PNG")


@pytest.mark.parametrize("change, field", [
    (dict(image_source="/no/such/file.png"), "image_source"),
    (dict(image_source=b"not an image"), "image_source"),
    (dict(image_source=None), "image_source"),
    (dict(question=""), "question"),
    (dict(question="   "), "question"),
    (dict(bbox=(10, 10, 500, 50)), "bbox"),  # outside the 100x100 image
    (dict(bbox=(-1, 10, 50, 50)), "bbox"),
    (dict(bbox=(10, 10, 10, 50)), "bbox"),  # zero area
    (dict(bbox=(50, 10, 10, 50)), "bbox"),  # inverted
    (dict(bbox=(1, 2, 3)), "bbox"),
    (dict(bbox=(0, 0, float("nan"), 5)), "bbox"),
    (dict(neg_bbox=(90, 90, 120, 120)), "neg_bbox"),
    (dict(pos_crop=b"garbage"), "pos_crop"),
    (dict(neg_crop="/no/such/crop.png"), "neg_crop"),
    (dict(choices="plus"), "choices"),
    (dict(answer=3), "answer"),
])
def test_bad_input_names_the_example_and_the_field(change, field):
    good = dict(id="bad-7", question="Which?", image_source=PNG.getvalue(), bbox=(10, 10, 50, 50))
    Example(**good).validate()  # the base record is fine: only `change` breaks it
    ex = Example(**{**good, **change})
    with pytest.raises(ValueError) as err:
        ex.validate()
    assert "example bad-7" in str(err.value) and f"field {field}" in str(err.value)


def test_truncated_image_fails_loudly_on_decode():
    ex = Example(id="trunc", question="q?", image_source=PNG.getvalue()[:200], bbox=(1, 1, 5, 5))
    with pytest.raises(ValueError, match=r"example trunc: field image_source"):
        ex.image


def test_without_answer():
    ex = data.synthetic(1, 0)[0]
    bare = ex.without_answer()
    assert bare.answer is None and bare.choices is None and ex.answer is not None
    assert (bare.id, bare.question, bare.bbox) == (ex.id, ex.question, ex.bbox)


# ----------------------------------------------------------------------------- loaders

def test_load_jsonl_relative_paths_and_errors(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    noise_image(64, 48, 0).save(tmp_path / "imgs" / "a.png")
    noise_image(64, 48, 1).save(tmp_path / "b.png")
    rows = [dict(id=1, image="imgs/a.png", question="What colour?", bbox=[1, 2, 30, 40], answer=3,
                 choices=["1", "2", "3"], category="color"),
            dict(id="two", image=str(tmp_path / "b.png"), question="Which?", bbox=[0, 0, 64, 48],
                 neg_bbox=[0, 0, 10, 10])]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    monkeypatch.chdir(tmp_path / "imgs")  # relative image paths must not depend on the cwd
    exs = data.load_examples(str(path))
    assert [e.id for e in exs] == ["1", "two"]
    assert exs[0].bbox == (1.0, 2.0, 30.0, 40.0) and exs[0].answer == "3"
    assert exs[0].meta == {"category": "color"}
    assert np.array_equal(np.asarray(exs[0].image), np.asarray(noise_image(64, 48, 0)))
    assert exs[1].neg_bbox == (0.0, 0.0, 10.0, 10.0)

    def fails(lines, *needles):
        bad = tmp_path / "bad.jsonl"
        bad.write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError) as err:
            data.load_jsonl(bad)
        assert all(s in str(err.value) for s in needles), str(err.value)

    good = json.dumps(rows[0])
    zero_area = json.dumps({**rows[0], "id": "x", "bbox": [5, 5, 5, 9]})
    fails([good, good.replace('"id": 1', '"id": 9'), zero_area], "line 3", "example x", "field bbox")
    fails([good, "{not json"], "line 2", "JSON")
    fails([json.dumps({k: v for k, v in rows[0].items() if k != "image"})], "line 1", "field image")
    fails([json.dumps({**rows[0], "image": "imgs/missing.png"})], "line 1", "example 1", "field image")
    fails([good, good], "line 2", "example 1", "duplicate")
    fails([""], "no examples")


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_load_parquet_release_schema(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    full, pos, neg = noise_image(80, 60, 0), noise_image(20, 20, 1), noise_image(20, 20, 2)
    full.save(tmp_path / "full.png")
    img = lambda im: {"bytes": _png(im), "path": None}  # noqa: E731
    table = pa.table({
        "prompt": [[{"role": "user", "content": "<image>What is written on the sign?"}],
                   [{"role": "user", "content": "<image>\nHow many cats?"}]],
        "images": [[img(full)], [{"bytes": None, "path": "full.png"}]],  # a path: relative to the file
        "teacher_images": [[img(full), img(pos)], [img(full), img(pos)]],
        "teacher_neg_images": [[img(full), img(neg)], [img(full), img(neg)]],
        "reward_model": [{"ground_truth": "STOP"}, {"ground_truth": "2"}],
        "extra_info": [{"index": 17}, {"index": 18}],
    })
    pq.write_table(table, tmp_path / "train.parquet")
    exs = data.load_examples(str(tmp_path / "train.parquet"))
    assert [e.id for e in exs] == ["17", "18"]
    assert [e.question for e in exs] == ["What is written on the sign?", "How many cats?"]
    assert [e.answer for e in exs] == ["STOP", "2"] and exs[0].bbox is None
    f, p, n = data.evidence_views(exs[1], "paper")
    for got, want in ((f, full), (p, pos), (n, neg)):
        assert np.array_equal(np.asarray(got), np.asarray(want))

    assert data.clean_question(data._question_text("<image>Plain?")) == "Plain?"
    parts = [{"type": "image"}, {"type": "text", "text": "Parts?"}]
    assert data._question_text([{"role": "user", "content": parts}]) == "Parts?"
    pq.write_table(table.set_column(0, "prompt", pa.array([[{"role": "user", "content": "ok?"}],
                                                           [{"role": "user", "content": "<image>"}]])),
                   tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"row 1: example 18: field question"):
        data.load_parquet(tmp_path / "bad.parquet")
    pq.write_table(table.drop_columns(["images"]), tmp_path / "nocol.parquet")
    with pytest.raises(ValueError, match=r"column images missing"):
        data.load_parquet(tmp_path / "nocol.parquet")


def test_parquet_without_pyarrow_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        data.load_parquet(tmp_path / "x.parquet")


def test_load_examples_dispatch():
    exs = data.load_examples("synthetic:8:3")
    assert len(exs) == 8 and exs[0].id == "zoom-s3-000000"
    for spec in ("train.csv", "synthetic:8", "synthetic:x:1"):
        with pytest.raises(ValueError, match="spec"):
            data.load_examples(spec)


# ----------------------------------------------------------------------------- the zoom world

def test_zoom_world_is_deterministic_and_seeds_are_disjoint():
    a, b, c = data.synthetic(6, 0), data.synthetic(6, 0), data.synthetic(6, 1)
    meta = lambda exs: [(e.id, e.bbox, e.answer, e.question) for e in exs]  # noqa: E731
    assert meta(a) == meta(b)
    pix = lambda exs: [hashlib.md5(e.image.tobytes()).hexdigest() for e in exs]  # noqa: E731
    assert pix(a) == pix(b) == pix(data.synthetic(3, 0)) + pix(a)[3:]  # example i does not depend on n
    assert not set(pix(a)) & set(pix(c)) and not {e.id for e in a} & {e.id for e in c}
    assert not {e.bbox for e in a} & {e.bbox for e in c}  # new layouts, not just new noise
    ex = pickle.loads(pickle.dumps(a[0]))  # lazy sources survive pickling (DataLoader workers)
    assert hashlib.md5(ex.image.tobytes()).hexdigest() == pix(a)[0]


def test_zoom_world_answers_are_balanced_and_listed_in_the_question():
    exs = data.synthetic(400, 0)
    assert set(Counter(e.answer for e in exs).values()) == {100}
    counts = Counter(e.answer for e in data.synthetic(10, 5)).values()
    assert len(counts) == 4 and max(counts) - min(counts) <= 1
    for c in exs[0].choices:
        assert c in exs[0].question
    assert all(e.answer in e.choices and e.validate() for e in exs[:4])
    assert data.chance_accuracy(exs) == pytest.approx(0.25)
    small = data.synthetic(12, 0, canvas=256, target_size=30, glyph_px=2, n_distractors=4,
                           classes=("tee", "ell"))
    assert small[0].image.size == (256, 256) and small[0].bbox[2] - small[0].bbox[0] == 30
    assert set(e.answer for e in small) == {"tee", "ell"} and data.chance_accuracy(small) == 0.5
    with pytest.raises(ValueError, match="classes"):
        data.synthetic(4, 0, classes=("plus", "star"))


def test_zoom_premise_glyph_obvious_in_crop_subtle_at_224px():
    # A nearest-class-template reader, templates = class means of z-scored grey pixels from
    # seed 0, tested on seed 1. On z+ it reads the glyph; on the 224 px canvas the student sees,
    # the same reader (on the target's 12x12 region) is far worse, yet clearly above chance.
    def features(exs):
        crop, small = [], []
        for ex in exs:
            full, pos, _ = data.evidence_views(ex, "blank")
            x0, y0 = (int(v) // 2 for v in ex.bbox[:2])
            low = full.resize((224, 224), Image.BICUBIC).crop((x0, y0, x0 + 12, y0 + 12))
            for out, im in ((crop, pos), (small, low)):
                a = np.asarray(im.convert("L"), np.float32).ravel()
                out.append((a - a.mean()) / (a.std() + 1e-6))
        return np.stack(crop), np.stack(small)

    train, test = data.synthetic(80, 0), data.synthetic(80, 1)
    classes = train[0].choices
    y_tr = np.array([classes.index(e.answer) for e in train])
    y_te = np.array([classes.index(e.answer) for e in test])
    acc = {}
    for name, X_tr, X_te in zip(("crop", "224"), features(train), features(test)):
        templates = np.stack([X_tr[y_tr == c].mean(0) for c in range(len(classes))])
        pred = ((X_te[:, None] - templates[None]) ** 2).sum(-1).argmin(1)
        acc[name] = (pred == y_te).mean()
    assert acc["crop"] >= 0.95, acc
    assert 0.35 <= acc["224"] <= acc["crop"] - 0.2, acc


def test_match_choice():
    choices = ["plus", "cross", "ring", "dot"]
    assert data.match_choice("cross", choices) == "cross"
    assert data.match_choice(" Ring.\n", choices) == "ring"
    assert data.match_choice("It is a dot, not a plus", choices) == "dot"  # the earliest wins
    assert data.match_choice("crossing rings", choices) is None  # whole words only
    assert data.match_choice("", choices) is None


# ----------------------------------------------------------------------------- sharding

def test_shard_is_disjoint_covering_and_equal():
    exs = data.synthetic(10, 0)
    ids = lambda xs: [e.id for e in xs]  # noqa: E731
    parts = [ids(data.shard(exs, r, 3)) for r in range(3)]  # training: equal counts, 1 dropped
    assert [len(p) for p in parts] == [3, 3, 3] and sorted(sum(parts, [])) == ids(exs[:9])
    parts = [ids(data.shard(exs, r, 3, drop_last=False)) for r in range(3)]  # evaluation: all
    assert [len(p) for p in parts] == [4, 3, 3] and sorted(sum(parts, [])) == ids(exs)
    parts = [ids(data.shard(exs, r, 5)) for r in range(5)]
    assert sorted(sum(parts, [])) == ids(exs) and {len(p) for p in parts} == {2}
    assert ids(data.shard(exs, 1, 3)) == ids(data.shard(exs, 1, 3))
    with pytest.raises(ValueError):
        data.shard(exs, 3, 3)
    with pytest.raises(ValueError):
        data.shard(exs[:2], 0, 3)


# -----------------------------------------------------------------------------
# Images as displayed, boxes in displayed pixels, one placeholder rule, images the processor rejects.

def write_rows(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_rotated_jpeg_is_read_as_displayed_and_its_box_is_in_displayed_pixels(tmp_path):
    # A phone photo: displayed portrait 96x128 with a red square at [20, 70, 60, 110]; stored
    # landscape (turned 90 degrees) with EXIF Orientation 6, as cameras write it.
    shown = np.full((128, 96, 3), 40, np.uint8)
    shown[70:110, 20:60] = (220, 30, 30)
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[data.ORIENTATION] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    assert Image.open(tmp_path / "phone.jpg").size == (128, 96)               # what PIL stores
    path = write_rows(tmp_path, [{"id": "p", "image": "phone.jpg", "question": "What is red?",
                                  "bbox": [20, 70, 60, 110]}])
    ex, = data.load_examples(path)
    assert ex.size == (96, 128) and ex.image.size == (96, 128)               # what a viewer shows
    full, pos, _ = data.evidence_views(ex)
    red = lambda im: float(np.mean((np.asarray(im)[..., 0] > 150) & (np.asarray(im)[..., 1] < 100)))
    assert red(pos) > 0.9                                                     # z+ is the evidence
    assert abs(red(full) - 40 * 40 / (96 * 128)) < 0.01                      # the student's image: same scene
    stored.save(tmp_path / "phone.png", exif=exif.tobytes())                 # a PNG's eXIf chunk: the same
    png = Example(id="q", question="q?", image_source=str(tmp_path / "phone.png"), bbox=(20, 70, 60, 110)).validate()
    assert png.size == (96, 128) and np.array_equal(np.asarray(png.image), shown)


def test_a_16_bit_grayscale_png_keeps_its_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    ex = Example(id="d", question="q?", image_source=str(tmp_path / "deep.png"), bbox=(0, 0, 10, 10)).validate()
    got = np.asarray(ex.image)[0, :, 0]
    assert got[0] == 0 and got[-1] == 255 and len(np.unique(got)) > 50      # not saturated to white
    assert np.abs(got.astype(float) - ramp[0] / 257).max() <= 0.5


@pytest.mark.parametrize("box, message", [
    ([0.1, 0.2, 0.5, 0.6], r"field bbox: box .* looks normalised to 0-1: boxes are \[x0, y0, x1, y1\] in pixels of "
                           r"the image as displayed .*here 128x96; convert with \[x0 \* W"),
    ([100, 100, 600, 500], r"field bbox: box .* lies outside the 128x96 image: .*\(0-1000 normalised\? convert with"),
])
def test_normalised_boxes_are_refused_saying_the_convention(tmp_path, box, message):
    noise_image(128, 96).save(tmp_path / "a.png")
    path = write_rows(tmp_path, [{"id": "n", "image": "a.png", "question": "q?", "bbox": box}])
    with pytest.raises(ValueError, match=rf"d.jsonl line 1: example n: {message}"):
        data.load_examples(path)


def test_the_image_placeholder_is_removed_by_every_loader(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    noise_image(64, 48).save(tmp_path / "a.png")
    jsonl = write_rows(tmp_path, [{"id": "0", "image": "a.png", "question": "<image>What is this?", "bbox": [0, 0, 9, 9]}])
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": "<image>What is this?"}]],
                             "images": [[{"bytes": (tmp_path / "a.png").read_bytes(), "path": None}]]}),
                   tmp_path / "d.parquet")
    questions = [data.load_examples(p)[0].question for p in (jsonl, tmp_path / "d.parquet")]
    assert questions == ["What is this?", "What is this?"]


def test_images_the_processor_would_reject_are_found_at_load(tmp_path, monkeypatch, capsys):
    Image.new("RGB", (1005, 5), (9, 9, 9)).save(tmp_path / "strip.png")     # 201:1
    noise_image(64, 48).save(tmp_path / "a.png")
    rows = [{"id": "ok", "image": "a.png", "question": "q?", "bbox": [0, 0, 9, 9]},
            {"id": "strip", "image": "strip.png", "question": "q?", "bbox": [0, 0, 9, 5]}]
    path = write_rows(tmp_path, rows)
    with pytest.raises(ValueError, match=r"d.jsonl line 2: example strip: field image_source: 1005x5 image: "
                                         r"aspect ratio over 200:1"):
        data.load_examples(path)
    kept = data.load_examples(path, skip_bad_images=True)                   # kept, for the trainer to replace
    assert "1 images the processor would reject" in capsys.readouterr().out
    with pytest.raises(data.RejectedImage, match="line 2: example strip"):
        kept[1].image                                                        # what the trainer's skip catches
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)                     # 64x48 = 3072 pixels
    with pytest.raises(ValueError, match=r"d.jsonl line 1: example ok: field image_source: 64x48 image: 3072 "
                                         r"pixels, beyond PIL's decompression-bomb limit 2000"):
        with pytest.warns(Image.DecompressionBombWarning):                  # PIL's own word, then ours
            data.load_examples(write_rows(tmp_path, rows[:1]))


def test_the_data_identity_names_each_file_and_changes_with_it(tmp_path):
    assert data.identity("synthetic:8:0") == {}
    path = write_rows(tmp_path, [{"id": "0"}])
    before = data.identity(path)
    assert list(before) == [str(path)] and before[str(path)].startswith(f"{path.stat().st_size} bytes, crc32 ")
    path.write_text(path.read_text().replace("0", "1"))                     # same size, other bytes
    assert data.identity(path) != before
