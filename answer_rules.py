"""
Answer rules: what a benchmark's scorer reads from a response, and whether that is right.

    extracted, pred, verdict = answer_rules.verdict("hrbench", response, ex, rules="official")

verdict is True / False, or None when the rule cannot settle the item: it reads no answer from
the response. None counts as wrong in the rule-only accuracy, as every official scorer counts it;
those are the items an LLM judge (judge.py, `eval.py --judge MODEL`) is asked about.

Two rule sets (`eval.py --rules`):
  official (default)  each benchmark's reference scorer, re-implemented from its published code, so
                      the numbers sit beside published ones. Quirks included: lmms-eval's V* rule
                      reads "Based on the image..." as B, MMStar's reads the first character.
  strict              the project's own, stricter reading: a letter counts only when it stands
                      alone (never the first letter of a word), <answer>...</answer> is honoured,
                      and ZoomBench MCQs may be settled by the option letter. Not comparable with
                      published numbers; use it to see how much the official quirks move a score.

  bench         official rule (source, version read)
  vstar         lmms-eval tasks/vstar_bench extract_answer_letter (lmms-eval 75571cfe): five
                ordered patterns on the upper-cased response, then a lone A-D letter
  hrbench       VLMEvalKit can_infer, exact-matching mode (VLMEvalKit e8e78f05): one option letter
                among the last 4 tokens, "answer is X", then exactly one option text; a refusal
                phrase or a lone "Z" reads as Z (wrong). VLMEvalKit's GPT fallback = our judge
  mmerealworld  MME-RealWorld evaluation/eval_your_results.py extract_characters_regex: the first
                capital A-E anywhere after dropping "The answer is"-style prefixes (two pairs of
                that list lack a comma and fuse, as upstream); else a short response that is part
                of one "(X) option" string
  mmstar        MMStar eval/vlmeval/evaluate/mmstar.py MMStar_eval: the gold letter equals the
                first character, or the one after "(", "option " or "the answer is "
  zoombench     ZwZ mm-eval/judge_qwenlm.py: <answer> span, else from "Answer:", else the last 3
                lines; then mathruler's grade_answer against the gold (`grade_answer` below).
                ZwZ sends everything else to its LLM judge (ZoomBench is not on its MCQ list), so
                the rule settles only correct items; the rest is None
  jsonl, zoom   the project's formats: data.match_choice for choices, normalized equality else
                (one rule, both sets)

Before every official rule the model's reasoning block is removed as lmms-eval does by default
(each <think>...</think> block; after a lone </think>, what follows). Thinking is off in this
project's prompts, so usually there is none. Differences from upstream: mathruler's LaTeX parsing
(pylatexenc) and \\frac / \\sqrt brace repair are left out (ZoomBench answers are words, letters
and counts); ZwZ's grader compares against the gold as the file stores it, here the gold letter.
Tests: python -m pytest -q tests/test_eval.py (one table of hand-made responses per benchmark).
"""

import re

import data

RULES = ("official", "strict")
LETTERS = "ABCDEFGH"


def _letters(ex):
    # The option letters of an item: A, B, ... one per choice (A-D when the options are unknown).
    return LETTERS[:len(ex.choices)] if ex.choices else "ABCD"


def _first(patterns, text, flags=0):
    # The first capture of the first pattern that matches anywhere in text, else None.
    for pattern in patterns:
        m = re.search(pattern, text, flags)
        if m:
            return m.group(1)
    return None


# ----------------------------------------------------------------------------------------------
# Official rules. Each gets the response with its reasoning block removed; letter rules return the
# letter they read (or None), MMStar's and ZoomBench's the (extracted, pred, verdict) triple.

def drop_thinking(text):
    """lmms-eval's default reasoning-tag stripping: every <think>...</think> block goes; a lone
    </think> (the chat template opened the block) keeps what follows; an unclosed <think> stays."""
    while "<think>" in text and "</think>" in text[text.find("<think>"):]:
        start = text.find("<think>")
        text = text[:start] + text[text.find("</think>", start) + len("</think>"):]
    if "</think>" in text and "<think>" not in text:
        text = text.rsplit("</think>", 1)[1]
    return text.strip()


VSTAR_PATTERNS = [r"^([A-D])\s*[.)\]]*",                                   # starts with the letter
                  r"(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+([A-D])",  # "ANSWER: B"
                  r"\(([A-D])\)",                                           # "(B)" anywhere
                  r"([A-D])\s*(?:\.|\)|\])",                                # "B." "B)" "B]", also "RED."
                  r"(?:^|\s)([A-D])(?:\s|$)"]                               # a lone letter, also "A GLOVE"


def _vstar_official(text, ex):
    up = text.strip().upper()  # upper-cased first: every word starting with A-D can match
    letter = _first(VSTAR_PATTERNS, up)
    if letter is None:  # then: the only A-D character of the whole response
        found = re.findall("[A-D]", up)
        letter = found[0] if len(found) == 1 else None
    return letter


VLMEVAL_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                    "I'm sorry, but without the image provided", "Cannot determine the answer")


def _hrbench_official(text, ex):
    letters = _letters(ex)
    if any(phrase in text for phrase in VLMEVAL_REFUSALS):
        return "Z"  # VLMEvalKit's "refused" prediction: settled, and never the gold
    tokens = re.sub(r"[.()\[\],:;!*#{}]", " ", text).split()
    named = [l for l in letters if l in tokens]
    # Exactly one option letter as a token, and its first occurrence among the last 4 tokens.
    if len(named) == 1 and tokens.index(named[0]) > len(tokens) - 5:
        return named[0]
    if not named and "Z" in tokens:
        return "Z"
    m = re.search(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", text)  # also "answer is Blue" -> B
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    # can_infer_text: in a response at most twice as long as all option texts together, exactly
    # one option text occurs (case-insensitive substring).
    if len(text) > 2 * sum(len(c) for c in ex.choices):
        return None
    named = [l for l, c in zip(letters, ex.choices) if c.lower() in text.lower()]
    return named[0] if len(named) == 1 else None


# The official prefix list, as written upstream: two pairs lack a separating comma, so Python
# joins them and those four phrases are never removed alone.
MME_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                "The best option isThe correct option is", "Best answer:Best option:")


def _mme_official(text, ex):
    s = text.strip()
    for prefix in MME_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return None
    m = re.search("[ABCDE]", s)  # case-sensitive, inside words too: "Based" -> B
    if m:
        return m.group(0)
    # No capital A-E: the first option string "(X) text" that contains the response (not
    # re-stripped after the prefixes went; an empty response is in every option, so reads A).
    for letter, choice in zip(_letters(ex), ex.choices):
        if s.lower() in f"({letter}) {choice}".lower():
            return letter
    return None


def _mmstar_official(text, ex):
    # MMStar_eval is a hit test, not an extractor: the gold letter must equal one of these reads.
    p = text.lower().strip().replace("\n", " ")
    reads = [p[:1]]
    if p[:1] == "(":
        reads.append(p[1:2])
    if p.startswith("option "):
        reads.append(p[7:8])
    if p.startswith("the answer is "):
        reads.append(p[14:15])
    if ex.answer.lower() in reads:
        return text, ex.answer, True
    # Not a hit: settled wrong when some read is an option letter (the scorer read a letter that is
    # not the gold), unsettled when none is (the response never named a letter where it looks).
    named = [r.upper() for r in reads if r and r.upper() in _letters(ex)]
    return text, (named[0] if named else None), (False if named else None)


def _zwz_extract(text):
    # ZwZ's answer extraction, character for character: with no </answer>, find() gives -1 and the
    # span stops one character before the end (upstream's quirk, kept).
    if "<answer>" in text:
        span = text[text.find("<answer>"):text.find("</answer>")]
        return span.replace("<answer>", "").replace("</answer>", "")
    if "Answer:" in text:
        return text[text.find("Answer:"):]
    return "\n".join(text.split("\n")[-3:])


def _zoombench_official(text, ex):
    extracted = _zwz_extract(text)
    # ZwZ calls grade_answer(gt, extracted): the gold in the `given` slot (the roles differ only
    # in two asymmetric checks, kept).
    ok = grade_answer(ex.answer, extracted)
    return extracted, (extracted if ok else None), (True if ok else None)


# ----------------------------------------------------------------------------------------------
# mathruler's grade_answer (hiyouga/MathRuler mathruler/grader.py, after PRM800K's grader), the
# string part written out here; sympy (a torch dependency) decides the expression equalities.

def _mathd(s):
    # MATH's normalize_answer (mathruler/math_normalize.py), without the \frac / \sqrt brace repair.
    s = s.strip()
    m = re.fullmatch(r"\\text\{(.+?)\}", s)
    s = kept = m.group(1).strip() if m else s
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    if "\\text{ " in s:  # units on the right; upstream asserts one split and keeps the input if not
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            return kept
        s = parts[0]
    s = s.replace("\\%", "").replace("%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    s = "0" + s if s[0] == "." else s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:  # "k = 3" -> "3"
        s = s.split("=")[1]
    s = s.replace(" ", "")
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(-?\d+)", s)  # "1/2" -> \frac{1}{2} when both parts are plain ints
    if m and s == f"{int(m.group(1))}/{int(m.group(2))}":
        s = f"\\frac{{{int(m.group(1))}}}{{{int(m.group(2))}}}"
    return s


MATHRULER_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week",
                   "month", "year", "foot", "feet", "inch", "yard")


def _float(s):
    try:
        return float(s)
    except ValueError:
        return None


def _strip_commas(s):
    # Thousands commas, "1,000,000" -> "1000000" (repeated: each pass drops every other one).
    while (t := re.sub(r"(\d),(\d\d\d)($|\D)", r"\1\2\3", s)) != s:
        s = t
    return s


def _str_is_int(s):
    # A number with no fractional part, after dropping thousands commas ("1,000").
    x = _float(_strip_commas(s))
    try:
        return x is not None and abs(x - int(round(x))) <= 1e-7
    except (OverflowError, ValueError):  # inf, nan
        return False


def _normalize(s):
    # mathruler's _normalize: units, $ and % dropped, spaces removed, lower-cased, ints canonical.
    m = re.search(r"^\\text\{(?P<text>.+?)\}$", s)
    s = m.group("text") if m else s
    for old, new in (("\\%", "%"), ("\\$", "$"), ("$", ""), ("%", ""), (" or ", " , "), (" and ", " , "),
                     ("million", "*10^6"), ("billion", "*10^9"), ("trillion", "*10^12")):
        s = s.replace(old, new)
    for unit in MATHRULER_UNITS:  # anywhere, also inside words: "seconds" -> "", "monday" -> "mon"
        s = re.sub(rf"{unit}(es)?(s)? *(\^[0-9]+)?", "", s)
    s = re.sub(r"\^ *\\circ", "", s)
    if s and s[0] == "{" and s[-1] == "}":
        s = s[1:-1]
    s = re.sub(",\\\\! *", "", s)
    if _float(s) is not None and _str_is_int(s):
        s = str(int(round(float(s))))
    s = re.sub("- *", "-", s)
    s = re.sub("([0-9]) +([0-9])", "\\1+\\2", s)  # "7 3/4" -> "7+3/4"
    s = s.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(s):
        s = str(int(float(s.replace(",", ""))))
    return s


def _split_tuple(s):
    # "(1,2)" -> ["1", "2"]; anything else is one element.
    s = _strip_commas(s)
    if not s:
        return []
    if len(s) > 2 and s[0] in "()[]" and s[-1] in "()[]" and not any(c in s[1:-1] for c in "()[]"):
        return [e.strip() for e in s[1:-1].split(",")]
    return [s]


def _sympy_equal(a, b):
    # (a) - (b) simplifies to 0, tried only for expressions of at most 2 distinct letters and no
    # huge powers (so model text never reaches sympy's parser as code).
    expr = f"({a})-({b})"
    if len({c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}) > 2:
        return False
    if "^{" in expr or "^(" in expr or re.search(r"\^[0-9]+\^|\^[0-9][0-9]+", expr):
        return False
    try:
        from sympy import simplify
        from sympy.parsing import sympy_parser as sp
        parsed = sp.parse_expr(expr.replace("^", "**"), transformations=sp.standard_transformations
                               + (sp.implicit_multiplication_application,))
        return simplify(parsed) == 0
    except Exception:  # any parse or simplify failure is "not equal", as upstream
        return False


def grade_answer(given, truth):
    """mathruler.grader.grade_answer(given, ground_truth): equal after MATH's normalization, or
    after mathruler's, or element-wise equal as sympy expressions (integers and a/b fractions
    compared strictly)."""
    if _mathd(given) == _mathd(truth):
        return True
    g, t = _normalize(given), _normalize(truth)
    if g == t:
        return True
    if not g:
        return False
    g_elems, t_elems = _split_tuple(g), _split_tuple(t)
    if len(t_elems) > 1 and (t[0] != g[0] or t[-1] != g[-1]):
        return False
    if len(t_elems) != len(g_elems):
        return False
    for te, ge in zip(t_elems, g_elems):
        frac = r"^-?[0-9]+.?/0*[1-9][0-9]*.?$"
        if re.search(frac, te) and re.search(frac, ge):
            ok = te == ge  # unreduced fractions must match as written
        elif _str_is_int(te) != _str_is_int(ge):
            ok = False  # an integer answer needs an integer response
        else:
            ok = _sympy_equal(te, ge)
        if not ok:
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Strict rules: the official extractor of each benchmark with ONE change everywhere: a letter counts
# only when it stands alone, never as the first letter of a word. All start from strip_reasoning.

def strip_reasoning(text):
    """The answer part of a response: after the last </think>, inside the last <answer>...</answer>."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:  # cut off while thinking: whatever came before <think> is all there is
        text = text.split("<think>", 1)[0]
    if "<answer>" in text:
        text = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    return text.strip()


def _vstar_strict(text, ex):
    # lmms-eval's order, letters A-D, each standing alone.
    return _first([r"^[(\[]?([A-D])(?![A-Za-z])",                          # "B", "(B)", "B. rubber"
                   r"(?i:(?:the\s+)?(?:answer|choice|option)(?:\s+is)?)[\s:]+([A-D])(?![A-Za-z])",
                   r"\(([A-D])\)",                                          # "(B)" anywhere
                   r"(?<![A-Za-z])([A-D])\s*[.)\]]",                         # "B." "B)" "B]"
                   r"(?<![A-Za-z])([A-D])(?![A-Za-z])"], text)              # a lone capital


def _hrbench_strict(text, ex):
    # can_infer without the position and "answer is" clauses: exactly one option letter as a
    # token, else exactly one option text inside a response at most twice as long as all options.
    tokens = re.sub(r"[.()\[\],:;!*#{}]", " ", text).split()
    named = [l for l in _letters(ex) if l in tokens]
    if len(named) == 1:
        return named[0]
    if len(text) <= 2 * sum(len(c) for c in ex.choices):
        named = [l for l, c in zip(_letters(ex), ex.choices) if c.lower() in text.lower()]
        if len(named) == 1:
            return named[0]
    return None


def _mme_strict(text, ex):
    # extract_characters_regex with every prefix removed and the first STANDALONE A-E; if none, a
    # short response that is part of one option string "(A) 13" names it.
    for prefix in ("The best answer is", "The correct answer is", "The answer is", "The answer",
                   "The best option is", "The correct option is", "Best answer:", "Best option:"):
        text = text.replace(prefix, "")
    letter = _first([r"(?<![A-Za-z])([A-E])(?![A-Za-z])"], text)
    if letter or len(text.split()) > 10 or not text.strip():
        return letter
    named = [l for l, c in zip(_letters(ex), ex.choices) if text.strip().lower() in f"({l}) {c}".lower()]
    return named[0] if named else None


def _mmstar_strict(text, ex):
    # MMStar_eval's positions, lower-cased, the letter standing alone: the first character, or the
    # one after "(", "option " or "the answer is ".
    m = re.match(rf"(?:\(|option |the answer is )?([{_letters(ex).lower()}])(?![a-z])", text.lower())
    return m.group(1).upper() if m else None


def zwz_gold_letter(gold):
    """ZwZ's extract_mcq_option for a gold answer: "C", "C.", "(C)", "C: ..." -> C; "Cat" -> ""."""
    m = re.match(r"^[ (\[]*([A-F])(?:$|[.)\]]|[:\-]\s+)", gold.strip())
    return m.group(1) if m else ""


def normalize(s):
    """Loose string normalization (lower case, no $ / \\text, numbers as floats): exact matches of
    free-form answers under the strict rules and the project's JSONL."""
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s.strip().lower()).replace("$", "")
    s = re.sub(r"^answer\s*:\s*", "", s)
    s = re.sub(r"\s+", " ", s).strip(" .,;:!?\"'`")
    try:
        return str(float(s.replace(",", "")))
    except ValueError:
        return s


def _zoombench_strict(text, ex):
    # ZwZ's extraction ("Answer:" else the last 3 lines), normalized equality with the gold; for an
    # MCQ also the option letter it names (first "(X)", else a standalone "X." / "X)" / "X").
    if "Answer:" in text:
        text = text[text.find("Answer:"):]
    else:
        text = "\n".join(text.split("\n")[-3:])
    if text and normalize(text) == normalize(ex.answer):
        return text, text, True
    if ex.meta.get("type") == "mcq":
        letters = _letters(ex)
        letter = _first([rf"\(([{letters}])\)", rf"(?<![A-Za-z])([{letters}])(?=[.)\s]|$)"], text)
        return text, letter, None if letter is None else letter == ex.answer
    return text, None, None


# For the report: which scorer each rule set follows.
SOURCES = {"official": {"vstar": "lmms-eval's extract_answer_letter", "hrbench": "VLMEvalKit's can_infer, exact matching",
                        "mmerealworld": "MME-RealWorld's extract_characters_regex", "mmstar": "MMStar's MMStar_eval",
                        "zoombench": "ZwZ's answer extraction + mathruler's grade_answer; the rest is for the judge"},
           "strict": {b: "stricter than the official scorer: not comparable with published numbers"
                      for b in ("vstar", "hrbench", "mmerealworld", "mmstar", "zoombench")}}
LETTER_RULES = {"official": {"vstar": _vstar_official, "hrbench": _hrbench_official, "mmerealworld": _mme_official},
                "strict": {"vstar": _vstar_strict, "hrbench": _hrbench_strict, "mmerealworld": _mme_strict,
                           "mmstar": _mmstar_strict}}
TRIPLE_RULES = {"official": {"mmstar": _mmstar_official, "zoombench": _zoombench_official},
                "strict": {"zoombench": _zoombench_strict}}


def verdict(bench, response, ex, rules="official"):
    """(extracted text, prediction, verdict) for one response under `rules` ("official" or
    "strict"); verdict None = no rule could settle it (counted wrong; a judge may decide)."""
    if ex.answer is None:
        raise ValueError(f"example {ex.id}: field answer: missing; evaluation needs the gold answer")
    if rules not in RULES:
        raise ValueError(f"unknown rules {rules!r}; choose one of {RULES}")
    if bench in ("jsonl", "zoom"):  # the project's formats: one rule for both sets
        text = strip_reasoning(response)
        if ex.choices:  # the zoom world / project JSONL: the choice the answer names
            choice = data.match_choice(text, ex.choices)
            return text, choice, None if choice is None else choice == ex.answer
        return text, text, True if normalize(text) == normalize(ex.answer) else None
    text = drop_thinking(response) if rules == "official" else strip_reasoning(response)
    if bench in TRIPLE_RULES[rules]:
        return TRIPLE_RULES[rules][bench](text, ex)
    if bench not in LETTER_RULES[rules]:
        raise ValueError(f"no answer rule for benchmark {bench!r}")
    letter = LETTER_RULES[rules][bench](text, ex)
    return text, letter, None if letter is None else letter == ex.answer
