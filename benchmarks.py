"""
Benchmark files -> data.Example, streamed; and the numbers each benchmark reports.

eval.py runs the model, answer_rules.py reads the answers, this file knows the files:

    items = read("hrbench", "hr_bench_8k.tsv")   # file order; ex.question = the exact prompt the model gets
    table = aggregate("hrbench", records)         # {"overall": (acc, n), "FSP": ..., "FCP": ...}

  bench         --data (the files as downloaded)                          reports
  vstar         test_questions.jsonl (or its folder) + images + sa_*.json  overall, attribute, spatial
                boxes; the lmms-lab parquet; VLMEvalKit's VStarBench.tsv
  hrbench       hr_bench_{4k,8k}.tsv or .parquet, base64 images           overall (= Avg), FSP, FCP
  mmerealworld  MME_RealWorld.json + image folder; the lmms-eval parquet  overall, Perception, Reasoning,
                shards (a folder or one file); the VLMEvalKit .tsv        and each Task/Subtask
  mmstar        mmstar.parquet or MMStar.tsv                              overall (micro), 6 categories
  zoombench     data/test.parquet (prompt/answer or query/response; the   overall, mcq/open, categories;
                ground-truth crop in crop_image)                          eval.py adds the crop view
  jsonl, zoom   the project's *.jsonl, synthetic:N:SEED (data.py)         overall (, per category)

Streaming. Nothing here reads pixels: an item carries a reference to its image and decodes it
when it is evaluated, so each rank touches only its share's images and memory holds one batch of
images whatever the file size.
  TSV       one pass, one row in memory at a time; the image is the byte span of its base64 field
            in the file (TsvImage). Every rank scans the file (page cache), none keeps it.
  parquet   the small columns are read whole; an image is (file, row, column), fetched by a
            sequential cursor that holds one value and one page (ParquetImage).
  JSON      a path next to the JSON (or under --image-root).
Measured on an HR-Bench-8K-sized TSV (4.63 GB: 800 rows of base64 7680x4320 JPEGs, made by
`python benchmarks.py --write-hrbench-tsv /tmp/hr8k.tsv`), 2 CPU cores, another job running:
  read() alone                 12 s, peak RSS 104 MB (the earlier reader, which kept every row's
                               base64 and bytes: 1.09 GB on the first 100 rows, so ~9 GB for 800)
  python eval.py --model tiny:qwen2_5_vl --bench hrbench --data /tmp/hr8k.tsv --out-dir /tmp/hr8k \
      --max-new-tokens 1 --batch-size B
                               peak RSS 3.58 GB at B = 8 (all 800 items, 9 min); 1.17 / 2.22 GB at
                               B = 1 / 4 (--limit 16): ~0.35 GB per 8K image in the batch (decoded,
                               then resized by the processor), whatever the file size

Bad rows. A benchmark file is not the user's to fix. A row that cannot be used (a missing field, a
gold answer that is no option, an image reference to nothing) becomes a BadItem naming the file,
row, column and reason; eval.py records it as an error, leaves it out of every denominator and
counts it in the report. An image that does not decode is found when its item is evaluated and
handled the same way there. A file without the columns of its --bench, or none of whose rows can
be used, is refused with an error. Parquet needs pyarrow; TSV and JSON only the standard library.
Facts about the files come from the benchmarks' dataset cards and the loaders of lmms-eval,
VLMEvalKit and the benchmarks' own repositories (see answer_rules.py for versions).
"""

import ast
import base64
import binascii
import csv
import functools
import io
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

import data
from answer_rules import LETTERS, zwz_gold_letter

BENCHES = ("vstar", "hrbench", "mmerealworld", "mmstar", "zoombench", "jsonl", "zoom")


@dataclass
class BadItem:
    """A row of a benchmark file that cannot be evaluated: reported, never scored."""
    id: str      # the row's id when it has one, else "FILE row N"
    reason: str  # names the file, row and column


# ----------------------------------------------------------------------------------------------
# Lazy images. Each is a zero-argument callable returning a PIL image (data.Example accepts that
# as an image source and decodes it on access); errors name the file, row and column.

def _open_image(value, where, column, root=None):
    # A stored image cell -> PIL image (header read only). HF Image structs {bytes, path}, raw
    # bytes, base64 text (HR-Bench, the MME-RealWorld parquet, every VLMEvalKit TSV) or a struct
    # holding only a file path (an HF dataset saved with its images beside the parquet).
    if isinstance(value, dict):
        if value.get("bytes") is None and value.get("path"):
            path = Path(root or ".") / value["path"]
            if not path.is_file():
                raise ValueError(f"{where}: column {column}: the image is stored as a file path "
                                 f"{value['path']!r}, not bytes, and {path} does not exist (pass --image-root: "
                                 "the folder those paths are relative to)")
            value = path
        else:
            value = value.get("bytes")
    if isinstance(value, str) and value:  # base64 text
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}: column {column}: not valid base64 image data ({value[:40]!r}...)") from None
    if not value:
        raise ValueError(f"{where}: column {column}: empty (no image in this cell)")
    try:  # PIL reads the header here; the pixels are decoded later, by data.Example
        return Image.open(value if isinstance(value, Path) else io.BytesIO(value))
    except OSError as e:
        raise ValueError(f"{where}: column {column}: not an image ({e})") from None


@dataclass(frozen=True)
class TsvImage:
    """A base64 image left in its TSV file: bytes [offset, offset + length)."""
    path: str
    offset: int
    length: int
    column: str
    where: str

    def __call__(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return _open_image(f.read(self.length).decode("ascii", "replace"), self.where, self.column)


@dataclass(frozen=True)
class ParquetImage:
    """An image cell left in its parquet file: (file, row, column)."""
    path: str
    row: int
    column: str
    where: str
    root: str

    def __call__(self):
        cursor = _cursor(self.path, self.column, os.stat(self.path).st_mtime_ns)  # a rewritten file: a new cursor
        return _open_image(cursor.get(self.row), self.where, self.column, self.root)


class _Cursor:
    # Reads one column of one parquet file forward, one row at a time, holding one value and one
    # page: a rank asks for its rows in increasing order, so a pass reads the column once. (A row
    # group's column read whole would be the whole file's images when the file has one group.)
    def __init__(self, path, column):
        self.path, self.column = path, column
        self._restart()

    def _restart(self):
        import pyarrow.parquet as pq
        pf = pq.ParquetFile(self.path, buffer_size=1 << 20, pre_buffer=False)  # stream pages, do not prefetch
        self.batches, self.next_row, self.value = pf.iter_batches(batch_size=1, columns=[self.column]), 0, None

    def get(self, row):
        if row < self.next_row - 1:  # a row behind us (a new pass, or resume): start over
            self._restart()
        while self.next_row <= row:
            self.value = next(self.batches).column(0)[0].as_py()
            self.next_row += 1
        return self.value


@functools.lru_cache(maxsize=2)  # the current column (and the previous one) of the current file
def _cursor(path, column, mtime):
    return _Cursor(path, column)


# ----------------------------------------------------------------------------------------------
# Reading rows: (where, row dict) pairs, so every error can say "file row N". A row may also be a
# ValueError (an unreadable line), which becomes a BadItem.

def _tsv_rows(path, required, images=("image",)):
    # One pass, one row in memory at a time. An image field (megabytes of base64) becomes a
    # TsvImage pointing at its bytes. VLMEvalKit writes each image once: a short `image`
    # (<= 64 chars) is the `index` of the row holding the pixels, resolved after the pass.
    csv.field_size_limit(sys.maxsize)
    rows, spans = [], {}
    with open(path, "rb") as f:
        header = next(csv.reader([f.readline().decode("utf-8-sig")], delimiter="\t"), [])
        _check_columns(path, header, required)
        line = 2  # the file line the next row starts on
        while True:
            start, raw = f.tell(), f.readline()
            if not raw:
                break
            while raw.count(b'"') % 2 and (more := f.readline()):  # a quoted field holds a newline
                raw += more
            where, line = f"{path} row {len(rows)} (line {line})", line + raw.count(b"\n")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
                # A row with no quote is plain tab-separated: str.split reads it (seconds for 4.6 GB; the
                # csv module, a minute); quoted fields (a tab or newline inside) need the csv module.
                values = next(csv.reader([text], delimiter="\t")) if '"' in text else text.rstrip("\r\n").split("\t")
                if len(values) != len(header):
                    raise ValueError(f"{len(values)} tab-separated fields, the header has {len(header)}")
            except (UnicodeDecodeError, csv.Error, ValueError) as e:
                rows.append((where, ValueError(str(e))))
                continue
            row = dict(zip(header, values))
            for c in images:
                if len(row.get(c) or "") > 64:  # pixels: keep where they are, not what they are
                    needle = row[c].encode()
                    row[c] = TsvImage(str(path), start + raw.find(needle), len(needle), c, where)
            if isinstance(row.get("image"), TsvImage):
                spans[row.get("index")] = row["image"]
            rows.append((where, row))
    for _, row in rows:
        if isinstance(row, dict) and isinstance(row.get("image"), str) and row["image"] in spans:
            row["image"] = spans[row["image"]]
    return rows


def _all_null(meta, column):
    # True when the parquet statistics say every value of `column` in this row group is null (a
    # struct's leaves all null): ZoomBench copies without crops have a crop_image column of nulls.
    leaves = [meta.column(j) for j in range(meta.num_columns)
              if meta.column(j).path_in_schema.split(".")[0] == column]
    return bool(leaves) and all(c.statistics is not None and c.statistics.has_null_count
                                and c.statistics.null_count == meta.num_rows for c in leaves)


def _parquet_rows(path, required, optional=(), images=("image",), root=None):
    try:
        import pyarrow.parquet as pq  # optional dependency: only parquet files need it
    except ImportError:
        raise ImportError(f"{path}: reading parquet needs pyarrow, which is not installed: "
                          "pip install pyarrow (or use the benchmark's .tsv / .json release)") from None
    files = sorted(Path(path).glob("*.parquet")) if Path(path).is_dir() else [Path(path)]
    if not files:
        raise FileNotFoundError(f"{path}: no *.parquet files in this folder")
    for f in files:  # the lmms-eval MME-RealWorld release is 70 shards data/train-000NN-of-00070.parquet
        try:  # pyarrow's errors (ArrowInvalid, ArrowIOError) subclass ValueError / OSError
            pf = pq.ParquetFile(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{f}: cannot read as parquet ({e})") from None
        names = pf.schema_arrow.names
        _check_columns(f, names, required)
        small = [c for c in (*required, *optional) if c in names and c not in images]
        lazy = [c for c in images if c in names]
        typed_null = {c for c in lazy if str(pf.schema_arrow.field(c).type) == "null"}  # a column of nulls only
        n = 0
        for g in range(pf.metadata.num_row_groups):
            meta = pf.metadata.row_group(g)
            empty = typed_null | {c for c in lazy if _all_null(meta, c)}
            # Only the small columns are read: the image columns are gigabytes.
            rows = pf.read_row_group(g, columns=small).to_pylist() if small else [{} for _ in range(meta.num_rows)]
            for row in rows:
                where = f"{f} row {n}"
                for c in lazy:
                    row[c] = None if c in empty else ParquetImage(str(f), n, c, where, str(root or f.parent))
                yield where, row
                n += 1


def _table_rows(path, required, optional=(), images=("image",), root=None):
    # .tsv, .parquet, or a folder of .parquet shards.
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.suffix == ".tsv":
        return _tsv_rows(path, required, images)
    if path.suffix == ".parquet" or path.is_dir():
        return _parquet_rows(path, required, optional, images, root)
    raise ValueError(f"{path}: expected a .tsv or .parquet file (or a folder of .parquet shards)")


def _json_rows(path):
    # A JSON array (MME-RealWorld) or JSON lines (V*).
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"{path} line {n}", json.loads(line)
                    except json.JSONDecodeError as e:
                        yield f"{path} line {n}", ValueError(f"not valid JSON ({e})")
        return
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected a JSON array of questions") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON array of questions, got {type(rows).__name__}")
    yield from ((f"{path} item {n}", row) for n, row in enumerate(rows))


def _check_columns(path, names, required):
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} missing (found {list(names)}); is this the right "
                         "file for this --bench?")


def _get(row, *names, required=True):
    # The first present, non-empty field among `names` (releases disagree on column names).
    for name in names:
        value = row.get(name)
        if value is not None and value != "":
            return value
    if required:
        raise ValueError(f"column {' / '.join(names)}: missing or empty")
    return None


def _image(value, column):
    # A row's image cell, as the reader left it -> an image source for data.Example.
    if callable(value):
        return value
    if isinstance(value, str) and value:  # a TSV reference that pointed at no row with pixels
        raise ValueError(f"column {column}: {value!r} is neither base64 pixels nor the index of a row that has them")
    raise ValueError(f"column {column}: empty (no image)")


def _collect(rows, build, ident, limit=None):
    # Build every row (no pixels are read); a row that fails becomes a BadItem with the file, row
    # and reason. Ids must be unique: they key predictions and resume, and seed z-.
    items, seen, n_bad, first_bad = [], set(), 0, []
    for where, row in rows:
        if limit is not None and len(items) >= limit:
            break
        try:
            if isinstance(row, Exception):
                raise row
            if not isinstance(row, dict):
                raise ValueError(f"expected an object, got {type(row).__name__}")
            ex = build(row)
            if ex.id in seen:
                raise ValueError(f"id {ex.id}: duplicate")
            seen.add(ex.id)
            items.append(ex)
        except ValueError as e:
            label = ident(row) if isinstance(row, dict) else None
            items.append(BadItem(id=where if label is None else str(label), reason=f"{where}: {e}"))
            n_bad += 1
            first_bad += [items[-1].reason][:3 - len(first_bad)]
    if n_bad == len(items):
        raise ValueError(f"none of the {len(items)} rows can be used; is this the right file for this --bench? "
                         f"First problems: {first_bad}")
    return items


def _mcq(ex_id, prompt, image, options, answer, **kw):
    # A multiple-choice Example: choices = the option texts in letter order (A, B, ...), answer =
    # the gold letter. The letters of the options are LETTERS[:len(choices)].
    answer = str(answer).strip().upper()
    if answer not in LETTERS[:len(options)]:
        raise ValueError(f"column answer: {answer!r} is not one of the option letters {LETTERS[:len(options)]}")
    return data.Example(id=str(ex_id), question=prompt, image_source=image, answer=answer,
                        choices=[str(o).strip() for o in options], **kw)


def _options(row, columns):
    # Option texts from the A, B, C, ... columns, stopping at the first empty one.
    options = []
    for letter in columns:
        value = row.get(letter)
        if value is None or str(value).strip() in ("", "nan"):
            break
        options.append(str(value))
    if len(options) < 2:
        raise ValueError(f"columns {list(columns)}: fewer than 2 options")
    return options


def _inline_options(text):
    # "(A) rubber\n(B) cotton" lines, or "(A) 3 (B) 4" on one line: option texts A, B, ... in
    # order; each runs to the next marker or to the end of its line (so a closing instruction line
    # is never part of the last option).
    options = []
    for letter, option in re.findall(r"\(([A-H])\)[ \t]*([^\n]*?)[ \t,;]*(?=\([A-H]\)|\n|\Z)", text):
        if letter != LETTERS[len(options)]:
            break
        options.append(option)
    return options


# ----------------------------------------------------------------------------------------------
# Readers. Each puts the prompt the benchmark's own evaluation sends into ex.question, and the
# fields its report groups by into ex.meta.

VSTAR_CATEGORIES = {"direct_attributes": "attribute", "relative_position": "spatial"}
VSTAR_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def read_vstar(path, image_root=None, limit=None):
    """craigwu/vstar_bench: test_questions.jsonl, keys image (relative path), text (question,
    options and instruction), label, category, question_id. Each image's sidecar sa_X.json holds
    the target boxes [x, y, w, h]: their union becomes ex.bbox (z+ for the gate diagnostics); a
    missing sidecar leaves the box empty, with a warning. Or the lmms-lab parquet (image struct,
    text, label, question_id, category; no boxes), or VLMEvalKit's VStarBench.tsv (index, base64
    image, question, A-D, answer, optional category; no boxes), whose question gets the official
    "(A) ..." lines and instruction."""
    path = Path(path)
    if path.is_dir():
        path = path / "test_questions.jsonl"
    if path.suffix == ".parquet":
        rows = _table_rows(path, ("image", "text", "label", "question_id", "category"))
        return _collect(rows, lambda row: _vstar_example(row, _image(row["image"], "image"), None),
                        lambda row: row.get("question_id"), limit)
    if path.suffix == ".tsv":
        rows = _table_rows(path, ("index", "question", "answer", "image", "A", "B"), ("C", "D", "category"))
        return _collect(rows, _vstar_tsv_example, lambda row: f"vstar-{row.get('index')}", limit)
    root = Path(image_root) if image_root else path.parent
    no_box = []

    def build(row):
        image = root / str(_get(row, "image"))
        if not image.is_file():
            raise ValueError(f"column image: file {image} not found (images are read relative to "
                             f"{root}; pass --image-root if they live elsewhere)")
        sidecar = image.with_suffix(".json")  # sa_4690.jpg -> sa_4690.json
        if not sidecar.is_file():
            no_box.append(sidecar.name)
        return _vstar_example(row, str(image), _vstar_box(sidecar) if sidecar.is_file() else None)
    items = _collect(_json_rows(path), build, lambda row: row.get("question_id"), limit)
    if no_box:
        warnings.warn(f"V*: {len(no_box)} of {len(items)} images have no sidecar box file (e.g. {no_box[0]} next to "
                      "its image): those items have no box, so the gate diagnostics cannot use them")
    return items


def _vstar_example(row, image, bbox):
    text = _get(row, "text")
    options = _inline_options(text)
    if len(options) < 2:
        raise ValueError("column text: no '(A) ...' / '(B) ...' option lines found")
    category = _get(row, "category")
    # The text already ends with "Answer with the option's letter from the given choices directly."
    return _mcq(_get(row, "question_id"), text, image, options, _get(row, "label"), bbox=bbox,
                meta={"category": VSTAR_CATEGORIES.get(category, category)})


def _vstar_tsv_example(row):
    options, question = _options(row, "ABCD"), str(_get(row, "question")).rstrip()
    if len(_inline_options(question)) < 2:  # options only in the A-D columns: write them as the jsonl does
        question += "\n" + "".join(f"({LETTERS[i]}) {o}\n" for i, o in enumerate(options)) + VSTAR_INSTRUCTION
    elif VSTAR_INSTRUCTION not in question:
        question += "\n" + VSTAR_INSTRUCTION
    category = row.get("category") or None
    return _mcq(f"vstar-{row['index']}", question, _image(row["image"], "image"), options, _get(row, "answer"),
                meta={"category": VSTAR_CATEGORIES.get(category, category)})


def _vstar_box(sidecar):
    # Union of the target boxes, [x, y, w, h] -> [x0, y0, x1, y1]; relative_position has two.
    try:
        boxes = json.loads(sidecar.read_text())["bbox"]
        x0 = min(b[0] for b in boxes)
        y0 = min(b[1] for b in boxes)
        x1 = max(b[0] + b[2] for b in boxes)
        y1 = max(b[1] + b[3] for b in boxes)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"sidecar {sidecar}: field bbox: expected a list of [x, y, w, h] ({e!r})") from None
    return (x0, y0, x1, y1)


def read_hrbench(path, image_root=None, limit=None):
    """DreamMr/HR-Bench hr_bench_{4k,8k}.tsv / .parquet: index, question, A-D, answer (letter),
    category (single = FSP, cross = FCP), cycle_category, image (base64). Prompt: the authors'
    (VLMEvalKit ImageMCQ) wording."""
    rows = _table_rows(path, ("index", "question", "answer", "category", "image", "A", "B"),
                       ("C", "D", "cycle_category"))

    def build(row):
        options = _options(row, "ABCD")
        prompt = (f"Question: {_get(row, 'question')}\nOptions:\n"
                  + "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options))
                  + "Please select the correct answer from the options above. \n")
        category = {"single": "FSP", "cross": "FCP"}.get(_get(row, "category"))
        if category is None:
            raise ValueError(f"column category: expected single or cross, got {row['category']!r}")
        return _mcq(f"hrbench-{row['index']}", prompt, _image(row["image"], "image"), options,
                    _get(row, "answer"), meta={"category": category, "cycle": row.get("cycle_category")})
    return _collect(rows, build, lambda row: f"hrbench-{row.get('index')}", limit)


MME_INSTRUCTION = ("Select the best answer to the above multiple-choice question based on the image. "
                   "Respond with only the letter (A, B, C, D, or E) of the correct option.")


def read_mmerealworld(path, image_root=None, limit=None):
    """MME-RealWorld, EN. Official MME_RealWorld.json (Question_id, Image path, Text, Answer
    choices ["(A) ..", ..], Ground truth, Task, Subtask, Category) with images under image_root
    (default: the JSON's folder); the lmms-eval parquet shards (bytes = base64 image, question,
    multi-choice options, answer, category = "Task/Subtask", l2-category); or the VLMEvalKit TSV
    (image, question, A-E, answer, category, l2-category). Prompt: the official one."""
    path = Path(path)
    if path.suffix == ".json":
        root = Path(image_root) if image_root else path.parent

        def build(row):
            image = root / str(_get(row, "Image"))
            if not image.is_file():
                raise ValueError(f"field Image: file {image} not found (pass --image-root: the folder "
                                 "the image zips were extracted into)")
            return _mme_example(_get(row, "Question_id"), _get(row, "Text"), _get(row, "Answer choices"),
                                _get(row, "Ground truth"), f"{_get(row, 'Task')}/{_get(row, 'Subtask')}",
                                str(image), row.get("Category"))
        return _collect(_json_rows(path), build, lambda row: row.get("Question_id"), limit)
    image_column = "image" if path.suffix == ".tsv" else "bytes"
    rows = _table_rows(path, ("index", "question", "answer", "category", image_column),
                       ("multi-choice options", "l2-category"), images=(image_column,))

    def build(row):
        options = row.get("multi-choice options")
        if path.suffix == ".tsv":  # VLMEvalKit: option texts in A-E ("(A) " stripped), the list as a string
            options = [f"({LETTERS[i]}) {o}" for i, o in enumerate(_options(row, "ABCDE"))] if row.get("A") \
                else _literal_list(options)
        return _mme_example(f"mme-{row['index']}", _get(row, "question"), options, _get(row, "answer"),
                            _get(row, "category"), _image(row[image_column], image_column), row.get("l2-category"))
    return _collect(rows, build, lambda row: f"mme-{row.get('index')}", limit)


def _literal_list(value):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ValueError(f"column multi-choice options: not a list of strings: {str(value)[:80]!r}") from None


def _mme_example(ex_id, question, options, answer, task_subtask, image, l2):
    if not isinstance(options, list) or len(options) < 2:
        raise ValueError(f"field Answer choices / multi-choice options: expected a list of '(A) ...' strings, "
                         f"got {options!r}")
    for i, o in enumerate(options):
        if not str(o).startswith(f"({LETTERS[i]})"):
            raise ValueError(f"field Answer choices: option {i} {o!r} does not start with ({LETTERS[i]})")
    task, _, subtask = str(task_subtask).partition("/")
    task = task.capitalize()  # lmms-eval writes "Perception/Monitoring", some copies lower-case
    if task not in ("Perception", "Reasoning") or not subtask:
        raise ValueError(f"field Task/Subtask (category): expected 'Perception/...' or 'Reasoning/...', "
                         f"got {task_subtask!r}")
    # The official prompt (evaluation/model_vqa_mme_real_world.py), options verbatim.
    prompt = (f"{question} The choices are listed below: \n" + "".join(f"{o}\n" for o in options)
              + MME_INSTRUCTION + "\nThe best answer is:")
    return _mcq(ex_id, prompt, image, [str(o)[3:].strip() for o in options], answer,
                meta={"task": task, "subtask": f"{task}/{subtask}", "category": l2,
                      # verbatim "(A) ..." strings: the official rule matches a response against them
                      "options": [str(o) for o in options]})


MMSTAR_CATEGORIES = ("coarse perception", "fine-grained perception", "instance reasoning", "logical reasoning",
                     "science & technology", "math")


def read_mmstar(path, image_root=None, limit=None):
    """Lin-Chen/MMStar: mmstar.parquet (image struct) or MMStar.tsv (base64), columns index,
    question (options inline), answer, category (one of the 6 core categories; anything else means
    another benchmark's file), l2_category. Prompt: lmms-eval's default, which asks for the letter."""
    rows = _table_rows(path, ("index", "question", "answer", "category", "image"), ("l2_category",))

    def build(row):
        question, category = _get(row, "question"), _get(row, "category")
        if category not in MMSTAR_CATEGORIES:
            raise ValueError(f"column category: {category!r} is not one of MMStar's categories {MMSTAR_CATEGORIES}")
        # Two option layouts: "Options: A: x, B: y, ..." on one line (most rows) and "(A) x" lines
        # (346 of the 1,500). Option texts only feed the chance level; unparsed, the letters stay A-D.
        found = re.findall(r"(?:Options:\s*|,\s*)([A-D]): (.*?)(?=,\s*[A-D]: |$)", question, re.DOTALL)
        options = [o for _, o in found] if [l for l, _ in found] == list(LETTERS[:len(found)]) else []
        options = options if len(options) >= 2 else _inline_options(question)
        prompt = question + "\nAnswer with the option's letter from the given choices directly"
        meta = {"category": category, "l2_category": row.get("l2_category")}
        image = _image(row["image"], "image")
        if len(options) >= 2:
            return _mcq(f"mmstar-{row['index']}", prompt, image, options, _get(row, "answer"), meta=meta)
        return data.Example(id=f"mmstar-{row['index']}", question=prompt, image_source=image,
                            answer=str(_get(row, "answer")).strip().upper(), meta=meta)
    return _collect(rows, build, lambda row: f"mmstar-{row.get('index')}", limit)


def read_zoombench(path, image_root=None, limit=None):
    """inclusionAI/ZoomBench data/test.parquet. Column names differ between copies; both work:
    question = prompt | query | question, answer = answer | response, image (struct; bytes, or a
    path relative to image_root / the parquet's folder), crop_image (the ground-truth crop: z+ and
    the crop view), optional id, question_type ("mcq" / other), category | sub_task | dimension,
    bbox [x1, y1, x2, y2]. MCQs carry "(A) .." options in the question and a letter answer; open
    questions a free-form one."""
    rows = _table_rows(path, ("image",), ("id", "index", "prompt", "query", "question", "answer", "response",
                                          "question_type", "category", "sub_task", "dimension", "bbox"),
                       images=("image", "crop_image"), root=image_root)

    def build(row):
        question = data.clean_question(str(_get(row, "prompt", "query", "question")))
        answer = str(_get(row, "answer", "response")).strip()
        options, gold_letter = _inline_options(question), zwz_gold_letter(answer)
        kind = row.get("question_type")
        if kind is None:  # no type column: an MCQ is a letter answer to a question with (A) options
            kind = "mcq" if gold_letter and len(options) >= 2 else "open"
        meta = {"type": "mcq" if kind == "mcq" else "open",
                "category": _get(row, "category", "sub_task", "dimension", required=False),
                "gold": str(_get(row, "answer", "response"))}  # as stored: ZwZ grades against it verbatim
        ex_id = _get(row, "id", "index", required=False)
        ex_id = f"zoombench-{row['_row']}" if ex_id is None else str(ex_id)
        kw = dict(meta=meta, bbox=None if row.get("bbox") is None else tuple(row["bbox"]),
                  pos_crop=_image(row["crop_image"], "crop_image") if row.get("crop_image") else None)
        if meta["type"] == "open":
            return data.Example(id=ex_id, question=question, image_source=_image(row["image"], "image"),
                                answer=answer, **kw)
        if not gold_letter or len(options) < 2:
            raise ValueError(f"column question_type: mcq, but the answer {answer!r} is not a letter or the "
                             "question has no '(A) ...' option lines")
        return _mcq(ex_id, question, _image(row["image"], "image"), options, gold_letter, **kw)
    return _collect(((where, {**row, "_row": n} if isinstance(row, dict) else row)
                     for n, (where, row) in enumerate(rows)), build,
                    lambda row: _get(row, "id", "index", required=False) or f"zoombench-{row.get('_row')}", limit)


READERS = {"vstar": read_vstar, "hrbench": read_hrbench, "mmerealworld": read_mmerealworld,
           "mmstar": read_mmstar, "zoombench": read_zoombench}


def read(bench, path, image_root=None, limit=None):
    """The benchmark's file(s) at `path` -> its first `limit` rows in file order: data.Example, or
    BadItem for a row that cannot be used. No pixels are read (see the top of this file)."""
    if bench in ("jsonl", "zoom"):  # the project's own formats: data.py reads (and refuses bad rows)
        return data.load_examples(path)[:limit]
    if bench not in READERS:
        raise ValueError(f"unknown benchmark {bench!r}; choose one of {BENCHES}")
    return READERS[bench](path, image_root, limit)


# ----------------------------------------------------------------------------------------------
# Aggregation: {name: (accuracy, n)}, "overall" first. Rows are eval.py's prediction records:
# "meta" (the example's meta), a bool under `key` ("correct": rule only), and "error" for items
# that could not be evaluated: those are left out of every denominator (eval.py reports them).

def _acc(rows, key):
    return (sum(bool(r[key]) for r in rows) / len(rows), len(rows)) if rows else (float("nan"), 0)


def _groups(rows, field):
    out = {}
    for r in rows:
        if r["meta"].get(field) is not None:
            out.setdefault(str(r["meta"][field]), []).append(r)
    return dict(sorted(out.items()))


def _cycle_mean(rows, key):
    # HR-Bench: accuracy per rotation cycle of the options, then the mean over cycles (authors'
    # repo, VLMEvalKit, lmms-eval). Equals the plain mean when the cycles are complete.
    cycles = _groups(rows, "cycle") or {"all": rows}
    accs = [_acc(c, key)[0] for c in cycles.values() if c]
    return (sum(accs) / len(accs), len(rows)) if accs else (float("nan"), 0)


def aggregate(bench, rows, key="correct"):
    """The numbers the benchmark reports, {name: (accuracy in [0, 1], items)}, over the rows without
    an error."""
    rows = [r for r in rows if not r.get("error")]
    if bench == "hrbench":  # overall = HR-Bench's "Avg"
        cats = _groups(rows, "category")
        return {"overall": _cycle_mean(rows, key), **{c: _cycle_mean(cats.get(c, []), key) for c in ("FSP", "FCP")}}
    out = {"overall": _acc(rows, key)}  # micro average over items: every benchmark's headline here
    if bench == "mmerealworld":  # Perception / Reasoning, then each Task/Subtask
        return {**out, **{k: _acc(rs, key) for field in ("task", "subtask") for k, rs in _groups(rows, field).items()}}
    if bench == "zoombench":
        out.update({t: _acc(rs, key) for t, rs in _groups(rows, "type").items()})
    out.update({c: _acc(rs, key) for c, rs in _groups(rows, "category").items()})
    return out


if __name__ == "__main__":
    # The streaming memory check (numbers at the top of this file): an HR-Bench-8K-sized TSV, 800
    # rows of base64 7680x4320 JPEGs (4 distinct ones, noise on a gradient, ~4.3 MB each: 4.63 GB).
    import argparse

    import numpy as np
    ap = argparse.ArgumentParser(description="Write an HR-Bench-8K-sized TSV for the memory check.")
    ap.add_argument("--write-hrbench-tsv", required=True, metavar="PATH")
    ap.add_argument("--rows", type=int, default=800)
    args, rng, blobs = ap.parse_args(), np.random.default_rng(0), []
    ramp = np.linspace(0, 127, 7680, dtype=np.float32)[None, :, None] + np.linspace(0, 127, 4320)[:, None, None]
    for k in range(4):
        buf = io.BytesIO()
        Image.fromarray((ramp + rng.normal(0, 10 + k / 2, (4320, 7680, 3))).clip(0, 255).astype(np.uint8)).save(
            buf, format="JPEG", quality=73)
        blobs.append(base64.b64encode(buf.getvalue()).decode())
    with open(args.write_hrbench_tsv, "w", newline="") as f:
        f.write("index\tquestion\tA\tB\tC\tD\tanswer\tcategory\tcycle_category\timage\n")
        for i in range(args.rows):
            f.write(f"{i}\tWhat is written on sign {i % 200}?\tstop\tgo\twait\texit\t{'ABCD'[i % 4]}\t"
                    f"{('single', 'cross')[i // 100 % 2]}\tcycle{i // 200}\t{blobs[i % 4]}\n")
    print(f"wrote {args.write_hrbench_tsv}: {Path(args.write_hrbench_tsv).stat().st_size / 1e9:.2f} GB")
