"""
Benchmark files -> data.Example, each benchmark's own answer rule, and the numbers it reports.

eval.py runs the model; this file knows the benchmarks (facts and sources: shared/BENCHMARKS.md,
cited as §N). Three entry points, each dispatching on the benchmark name:

    examples = read("hrbench", "hr_bench_4k.parquet")    # ex.question = the exact prompt the model gets
    extracted, pred, verdict = judge("hrbench", response_text, ex)
    table = aggregate("hrbench", predictions)            # {"overall": (acc, n), "FSP": ..., "FCP": ...}

verdict is True / False, or None when no rule can read an answer from the response: only an LLM
judge could decide those. We run no judge: they count as wrong and eval.py lists them.

  bench         --data (the files as downloaded)                          reports
  vstar         test_questions.jsonl (or its folder) + images + sa_*.json  overall, attribute, spatial
                boxes; or the lmms-lab parquet (no boxes)
  hrbench       hr_bench_{4k,8k}.tsv or .parquet, base64 images           overall (= Avg), FSP, FCP
  mmerealworld  MME_RealWorld.json + image folder; the lmms-eval parquet  overall, Perception, Reasoning,
                shards (a folder or one file); the VLMEvalKit .tsv        and each Task/Subtask
  mmstar        mmstar.parquet or MMStar.tsv                              overall (micro), 6 categories
  zoombench     data/test.parquet (prompt/answer or query/response)       overall, mcq/open, categories
  jsonl, zoom   the project's *.jsonl, synthetic:N:SEED (data.py)         overall (, per category)

Every reader fails on the first bad row with the file, the row and the column. Parquet needs
pyarrow (`pip install pyarrow`); TSV and JSON need only the standard library.
"""

import ast
import base64
import binascii
import csv
import json
import re
import sys
from pathlib import Path

import data

BENCHES = ("vstar", "hrbench", "mmerealworld", "mmstar", "zoombench", "jsonl", "zoom")
LETTERS = "ABCDEFGH"


# ----------------------------------------------------------------------------------------------
# Reading rows: (where, row dict) pairs, so every error can say "file row N".

def _parquet_rows(path, required, optional=()):
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
            names = pq.ParquetFile(f).schema_arrow.names
        except (OSError, ValueError) as e:
            raise ValueError(f"{f}: cannot read as parquet ({e})") from None
        _check_columns(f, names, required)
        # Read only the columns we use: the image columns are gigabytes, the rest is small.
        rows = pq.read_table(f, columns=[c for c in (*required, *optional) if c in names]).to_pylist()
        yield from ((f"{f} row {n}", row) for n, row in enumerate(rows))


def _tsv_rows(path, required):
    # VLMEvalKit's TSVs hold multi-MB base64 images in one field: lift csv's 128 KB field limit.
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        _check_columns(path, reader.fieldnames or [], required)
        rows = [(f"{path} row {n} (line {reader.line_num})", row) for n, row in enumerate(reader)]
    # VLMEvalKit writes each image once: a row whose `image` is short (<= 64 chars) holds the
    # `index` of the row that has the pixels.
    images = {row.get("index"): row.get("image") for _, row in rows}
    for where, row in rows:
        if row.get("image") is not None and len(row["image"]) <= 64:
            if len(images.get(row["image"]) or "") <= 64:
                raise ValueError(f"{where}: column image: {row['image']!r} is neither base64 pixels nor "
                                 "the index of a row that has them")
            row["image"] = images[row["image"]]
        yield where, row


def _table_rows(path, required, optional=()):
    # .tsv, .parquet, or a folder of .parquet shards.
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.suffix == ".tsv":
        return _tsv_rows(path, required)
    if path.suffix == ".parquet" or path.is_dir():
        return _parquet_rows(path, required, optional)
    raise ValueError(f"{path}: expected a .tsv or .parquet file (or a folder of .parquet shards)")


def _json_rows(path):
    # A JSON array (MME-RealWorld) or JSON lines (V*).
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
        for n, line in lines:
            try:
                yield f"{path} line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: not valid JSON ({e})") from None
        return
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
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
    # An image cell -> encoded bytes. HF Image structs {bytes, path}, raw bytes, or a base64 string
    # (HR-Bench, the MME-RealWorld parquet and every VLMEvalKit TSV store base64 text).
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"column {column}: not valid base64 image data ({value[:40]!r}...)") from None
    raise ValueError(f"column {column}: no image bytes (got {type(value).__name__})")


def _collect(rows, build):
    # Build and validate every row (validate() reads each image's header); stop at the first bad
    # one, naming the file and row. Ids must be unique: they key predictions and seed z-.
    examples, seen = [], set()
    for where, row in rows:
        try:
            if not isinstance(row, dict):
                raise ValueError(f"expected an object, got {type(row).__name__}")
            ex = build(row).validate()
            if ex.id in seen:
                raise ValueError(f"id {ex.id}: duplicate")
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        seen.add(ex.id)
        examples.append(ex)
    if not examples:
        raise ValueError("no questions found")
    return examples


def _mcq(ex_id, prompt, image, options, answer, **kw):
    # A multiple-choice Example: choices = the option texts in letter order (A, B, ...), answer =
    # the gold letter. The letters of the options are LETTERS[:len(choices)].
    answer = str(answer).strip().upper()
    if answer not in LETTERS[:len(options)]:
        raise ValueError(f"answer {answer!r} is not one of the option letters {LETTERS[:len(options)]}")
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
    # "(A) rubber\n(B) cotton" lines inside a question (V*, ZoomBench): option texts A, B, ...
    found = re.findall(r"^\s*\(([A-H])\)\s*(.*?)\s*$", text, re.MULTILINE)
    options = []
    for letter, option in found:
        if letter != LETTERS[len(options)]:
            break
        options.append(option)
    return options


# ----------------------------------------------------------------------------------------------
# Readers. Each puts the prompt the benchmark's own evaluation sends into ex.question, and the
# fields its report groups by into ex.meta.

VSTAR_CATEGORIES = {"direct_attributes": "attribute", "relative_position": "spatial"}


def read_vstar(path, image_root=None):
    """craigwu/vstar_bench (§2): test_questions.jsonl, keys image (relative path), text (question,
    options and instruction), label, category, question_id. Each image's sidecar sa_X.json holds
    the target boxes [x, y, w, h]: their union becomes ex.bbox (z+ for the gate diagnostics).
    Or the lmms-lab parquet (image struct, text, label, question_id, category; no boxes)."""
    path = Path(path)
    if path.is_dir():
        path = path / "test_questions.jsonl"
    if path.suffix == ".parquet":
        rows = _table_rows(path, ("image", "text", "label", "question_id", "category"))
        return _collect(rows, lambda row: _vstar_example(row, _image(row["image"], "image"), None))
    root = Path(image_root) if image_root else path.parent

    def build(row):
        image = root / str(_get(row, "image"))
        if not image.is_file():
            raise ValueError(f"column image: file {image} not found (images are read relative to "
                             f"{root}; pass --image-root if they live elsewhere)")
        sidecar = image.with_suffix(".json")  # sa_4690.jpg -> sa_4690.json
        return _vstar_example(row, str(image), _vstar_box(sidecar) if sidecar.is_file() else None)
    return _collect(_json_rows(path), build)


def _vstar_example(row, image, bbox):
    text = _get(row, "text")
    options = _inline_options(text)
    if len(options) < 2:
        raise ValueError("column text: no '(A) ...' / '(B) ...' option lines found")
    category = _get(row, "category")
    # The text already ends with "Answer with the option's letter from the given choices directly."
    return _mcq(_get(row, "question_id"), text, image, options, _get(row, "label"), bbox=bbox,
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


def read_hrbench(path, image_root=None):
    """DreamMr/HR-Bench hr_bench_{4k,8k}.tsv / .parquet (§3): index, question, A-D, answer (letter),
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
    return _collect(rows, build)


MME_INSTRUCTION = ("Select the best answer to the above multiple-choice question based on the image. "
                   "Respond with only the letter (A, B, C, D, or E) of the correct option.")


def read_mmerealworld(path, image_root=None):
    """MME-RealWorld (§4), EN. Official MME_RealWorld.json (Question_id, Image path, Text, Answer
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
        return _collect(_json_rows(path), build)
    image_column = "image" if path.suffix == ".tsv" else "bytes"
    rows = _table_rows(path, ("index", "question", "answer", "category", image_column),
                       ("multi-choice options", "l2-category"))

    def build(row):
        options = row.get("multi-choice options")
        if path.suffix == ".tsv":  # VLMEvalKit: option texts in A-E ("(A) " stripped), the list as a string
            options = [f"({LETTERS[i]}) {o}" for i, o in enumerate(_options(row, "ABCDE"))] if row.get("A") \
                else _literal_list(options)
        return _mme_example(f"mme-{row['index']}", _get(row, "question"), options, _get(row, "answer"),
                            _get(row, "category"), _image(row[image_column], image_column), row.get("l2-category"))
    return _collect(rows, build)


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
                meta={"task": task, "subtask": f"{task}/{subtask}", "category": l2})


def read_mmstar(path, image_root=None):
    """Lin-Chen/MMStar (§6): mmstar.parquet (image struct) or MMStar.tsv (base64), columns index,
    question (options inline: "Options: A: .., B: .."), answer, category, l2_category.
    Prompt: lmms-eval's default, which asks for the letter (the official scorer reads the first
    character)."""
    rows = _table_rows(path, ("index", "question", "answer", "category", "image"), ("l2_category",))

    def build(row):
        question = _get(row, "question")
        # Option texts only feed the chance level; when they do not parse, the letters stay A-D.
        found = re.findall(r"(?:Options:\s*|,\s*)([A-D]): (.*?)(?=,\s*[A-D]: |$)", question, re.DOTALL)
        options = [o for _, o in found] if [l for l, _ in found] == list(LETTERS[:len(found)]) else []
        prompt = question + "\nAnswer with the option's letter from the given choices directly"
        meta = {"category": _get(row, "category"), "l2_category": row.get("l2_category")}
        image = _image(row["image"], "image")
        if len(options) >= 2:
            return _mcq(f"mmstar-{row['index']}", prompt, image, options, _get(row, "answer"), meta=meta)
        return data.Example(id=f"mmstar-{row['index']}", question=prompt, image_source=image,
                            answer=str(_get(row, "answer")).strip().upper(), meta=meta)
    return _collect(rows, build)


def read_zoombench(path, image_root=None):
    """inclusionAI/ZoomBench data/test.parquet (§5). Column names differ between copies; both work:
    question = prompt | query | question, answer = answer | response, image (struct), optional id,
    question_type ("mcq" / other), category | sub_task | dimension, bbox [x1, y1, x2, y2].
    MCQs carry "(A) .." options in the question and a letter answer; open questions a free-form one."""
    rows = _table_rows(path, ("image",), ("id", "index", "prompt", "query", "question", "answer", "response",
                                          "question_type", "category", "sub_task", "dimension", "bbox"))

    def build(row):
        question = str(_get(row, "prompt", "query", "question")).replace("<image>", "").strip()
        answer = str(_get(row, "answer", "response")).strip()
        options, gold_letter = _inline_options(question), _zwz_gold_letter(answer)
        kind = row.get("question_type")
        if kind is None:  # no type column: an MCQ is a letter answer to a question with (A) options
            kind = "mcq" if gold_letter and len(options) >= 2 else "open"
        meta = {"type": "mcq" if kind == "mcq" else "open",
                "category": _get(row, "category", "sub_task", "dimension", required=False)}
        ex_id = _get(row, "id", "index", required=False)
        ex_id = f"zoombench-{row['_row']}" if ex_id is None else str(ex_id)
        kw = dict(meta=meta, bbox=None if row.get("bbox") is None else tuple(row["bbox"]))
        if meta["type"] == "open":
            return data.Example(id=ex_id, question=question, image_source=_image(row["image"], "image"),
                                answer=answer, **kw)
        if not gold_letter or len(options) < 2:
            raise ValueError(f"column question_type: mcq, but the answer {answer!r} is not a letter or the "
                             "question has no '(A) ...' option lines")
        return _mcq(ex_id, question, _image(row["image"], "image"), options, gold_letter, **kw)
    return _collect(((where, {**row, "_row": n}) for n, (where, row) in enumerate(rows)), build)


READERS = {"vstar": read_vstar, "hrbench": read_hrbench, "mmerealworld": read_mmerealworld,
           "mmstar": read_mmstar, "zoombench": read_zoombench}


def read(bench, path, image_root=None):
    """The benchmark's file(s) at `path` -> validated examples, file order."""
    if bench in ("jsonl", "zoom"):  # the project's own formats: data.py reads them
        return data.load_examples(path)
    if bench not in READERS:
        raise ValueError(f"unknown benchmark {bench!r}; choose one of {BENCHES}")
    return READERS[bench](path, image_root)


# ----------------------------------------------------------------------------------------------
# Answer rules. All start from strip_reasoning; then each benchmark's own rule, with ONE change
# everywhere: a letter counts only when it stands alone, never as the first letter of a word. The
# official rules of MME-RealWorld (first A-E anywhere), MMStar (first character) and lmms-eval's
# V* (leading letter) read "Based on the image..." as B: a scorer bug, not an answer.

def strip_reasoning(text):
    """The answer part of a response: after the last </think>, inside the last <answer>...</answer>."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:  # cut off while thinking: whatever came before <think> is all there is
        text = text.split("<think>", 1)[0]
    if "<answer>" in text:
        text = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    return text.strip()


def _letters(ex):
    return LETTERS[:len(ex.choices)] if ex.choices else "ABCD"


def _first(patterns, text):
    for pattern in patterns:
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def _vstar_letter(text, ex):
    # lmms-eval's extract_answer_letter, in its order, letters A-D (§2).
    return _first([r"^[(\[]?([A-D])(?![A-Za-z])",                          # "B", "(B)", "B. rubber"
                   r"(?i:(?:the\s+)?(?:answer|choice|option)(?:\s+is)?)[\s:]+([A-D])(?![A-Za-z])",
                   r"\(([A-D])\)",                                          # "(B)" anywhere
                   r"(?<![A-Za-z])([A-D])\s*[.)\]]",                         # "B." "B)" "B]"
                   r"(?<![A-Za-z])([A-D])(?![A-Za-z])"], text)              # a lone capital


def _hrbench_letter(text, ex):
    # VLMEvalKit's can_infer (exact-matching mode, §3): exactly one option letter as a token, else
    # exactly one option text inside a response at most twice as long as all options together.
    tokens = re.sub(r"[.()\[\],:;!*#{}]", " ", text).split()
    named = [l for l in _letters(ex) if l in tokens]
    if len(named) == 1:
        return named[0]
    if len(text) <= 2 * sum(len(c) for c in ex.choices):
        named = [l for l, c in zip(_letters(ex), ex.choices) if c.lower() in text.lower()]
        if len(named) == 1:
            return named[0]
    return None


def _mme_letter(text, ex):
    # The official extract_characters_regex (§4): drop "The best answer is"-style prefixes, take the
    # first A-E; if none, a short response that is part of one option string "(A) 13" names it.
    for prefix in ("The best answer is", "The correct answer is", "The answer is", "The answer",
                   "The best option is", "The correct option is", "Best answer:", "Best option:"):
        text = text.replace(prefix, "")
    letter = _first([r"(?<![A-Za-z])([A-E])(?![A-Za-z])"], text)
    if letter or len(text.split()) > 10 or not text.strip():
        return letter
    named = [l for l, c in zip(_letters(ex), ex.choices) if text.strip().lower() in f"({l}) {c}".lower()]
    return named[0] if named else None


def _mmstar_letter(text, ex):
    # The official MMStar_eval (§6), lower-cased: the first character, or the one after "(",
    # "option " or "the answer is ".
    m = re.match(rf"(?:\(|option |the answer is )?([{_letters(ex).lower()}])(?![a-z])", text.lower())
    return m.group(1).upper() if m else None


def _zwz_gold_letter(gold):
    # ZwZ's extract_mcq_option: "C", "C.", "(C)", "C: ..." -> C; "Cat" -> "" (§1).
    m = re.match(r"^[ (\[]*([A-F])(?:$|[.)\]]|[:\-]\s+)", gold.strip())
    return m.group(1) if m else ""


def _normalize(s):
    # A small stand-in for mathruler's grade_answer (string normalization; numbers compared as
    # numbers). No sympy: "1/2" vs "0.5" is left to the judge.
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s.strip().lower()).replace("$", "")
    s = re.sub(r"^answer\s*:\s*", "", s)
    s = re.sub(r"\s+", " ", s).strip(" .,;:!?\"'`")
    try:
        return str(float(s.replace(",", "")))
    except ValueError:
        return s


def _zoombench_verdict(text, ex):
    # ZwZ's judge (§1) without its LLM: the answer after "Answer:" (else the last 3 lines), equal to
    # the gold after normalization -> correct; for an MCQ, the option letter it names (first "(X)",
    # else a standalone "X." / "X)" / "X"); anything else goes to the judge.
    if "Answer:" in text:
        text = text[text.find("Answer:"):]
    else:
        text = "\n".join(text.split("\n")[-3:])
    if text and _normalize(text) == _normalize(ex.answer):
        return text, text, True
    if ex.meta.get("type") == "mcq":
        letters = _letters(ex)
        letter = _first([rf"\(([{letters}])\)", rf"(?<![A-Za-z])([{letters}])(?=[.)\s]|$)"], text)
        return text, letter, None if letter is None else letter == ex.answer
    return text, None, None


LETTER_RULES = {"vstar": _vstar_letter, "hrbench": _hrbench_letter, "mmerealworld": _mme_letter,
                "mmstar": _mmstar_letter}


def judge(bench, response, ex):
    """(extracted answer text, prediction, verdict) for one response; verdict None = undecidable
    by rule (a judge would decide; counted wrong)."""
    if ex.answer is None:
        raise ValueError(f"example {ex.id}: field answer: missing; evaluation needs the gold answer")
    text = strip_reasoning(response)
    if bench in LETTER_RULES:
        letter = LETTER_RULES[bench](text, ex)
        return text, letter, None if letter is None else letter == ex.answer
    if bench == "zoombench":
        return _zoombench_verdict(text, ex)
    if ex.choices:  # the zoom world / project JSONL: the choice the answer names (data.match_choice)
        choice = data.match_choice(text, ex.choices)
        return text, choice, None if choice is None else choice == ex.answer
    # Free-form JSONL answers: an exact (normalized) match is correct; anything else needs a judge.
    return text, text, True if _normalize(text) == _normalize(ex.answer) else None


# ----------------------------------------------------------------------------------------------
# Aggregation: {name: (accuracy, n)}, "overall" first. Rows are eval.py's prediction records:
# "correct" (bool) and "meta" (the example's meta).

def _acc(rows):
    return (sum(r["correct"] for r in rows) / len(rows), len(rows)) if rows else (float("nan"), 0)


def _groups(rows, key):
    out = {}
    for r in rows:
        if r["meta"].get(key) is not None:
            out.setdefault(str(r["meta"][key]), []).append(r)
    return dict(sorted(out.items()))


def _cycle_mean(rows):
    # HR-Bench: accuracy per rotation cycle of the options, then the mean over cycles (authors'
    # repo, VLMEvalKit, lmms-eval). Equals the plain mean when the cycles are complete (§3).
    cycles = _groups(rows, "cycle") or {"all": rows}
    accs = [_acc(c)[0] for c in cycles.values() if c]
    return (sum(accs) / len(accs), len(rows)) if accs else (float("nan"), 0)


def aggregate(bench, rows):
    """The numbers the benchmark reports, {name: (accuracy in [0, 1], items)}."""
    if bench == "hrbench":  # overall = HR-Bench's "Avg"
        cats = _groups(rows, "category")
        return {"overall": _cycle_mean(rows), **{c: _cycle_mean(cats.get(c, [])) for c in ("FSP", "FCP")}}
    out = {"overall": _acc(rows)}  # micro average over items: every benchmark's headline here
    if bench == "mmerealworld":  # Perception / Reasoning, then each Task/Subtask
        return {**out, **{k: _acc(rs) for key in ("task", "subtask") for k, rs in _groups(rows, key).items()}}
    if bench == "zoombench":
        out.update({t: _acc(rs) for t, rs in _groups(rows, "type").items()})
    out.update({c: _acc(rs) for c, rs in _groups(rows, "category").items()})
    return out
