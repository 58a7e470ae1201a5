"""
Answer rules: what a benchmark's scorer reads from a response, and whether that is right.

    extracted, pred, verdict = answer_rules.verdict("hrbench", response, ex, rules="official", strip="upstream")

verdict is True / False, or None when the rule cannot settle the item: it reads no answer from
the response. None counts as wrong in the rule-only accuracy, as every official scorer counts it;
those are the items an LLM judge (judge.py, `eval.py --judge MODEL`) is asked about.

Two rule sets (`eval.py --rules`):
  official (default)  each benchmark's reference scorer applied to the RAW response exactly as
                      upstream applies it: the same whitespace, the same Unicode case behaviour,
                      every clause, quirks included (lmms-eval's V* rule reads "Based on ..." as B,
                      MMStar's reads the first character). Checked case by case against the
                      upstream code run verbatim (tests/test_answer_rules_parity.py).
  strict              the project's own reading (below); not comparable with published numbers.

  bench         official rule (source, commit read)
  vstar         lmms-eval tasks/vstar_bench/utils.py extract_answer_letter (75571cfe): five ordered
                patterns, case-insensitive, on the upper-cased response, then its only A-D letter
  hrbench       VLMEvalKit utils/matching_util.py can_infer, exact-matching mode (e8e78f05): one
                option letter among the last 4 tokens, "answer is X", then exactly one option text;
                a refusal phrase or a lone "Z" reads as Z (wrong); "Failed to obtain answer via
                API" skips to the option text. VLMEvalKit's GPT fallback is not reproduced. The
                HR-Bench authors' older copy (DreamMr/HR-Bench b17b1998, vlmeval/utils/matching_util.py)
                has no last-4-tokens limit, no "answer is X" clause and no length limit on option
                text, and the authors' own evaluate() asks a local LLM instead; published numbers
                may come from either
  mmerealworld  MME-RealWorld evaluation/eval_your_results.py extract_characters_regex (87096fcf):
                the first capital A-E anywhere after dropping "The answer is"-style prefixes (two
                pairs of that list lack a comma and fuse, as upstream); else a short response that
                is part of one "(X) option" string
  mmstar        MMStar eval/vlmeval/evaluate/mmstar.py MMStar_eval (88f243ab): the gold letter
                equals the first character, or the one after "(", "option " or "the answer is "
  zoombench     ZwZ mm-eval/judge_qwenlm.py (fdc0ba1a): <answer> span, else from "Answer:", else
                the last 3 lines; then mathruler.grader.grade_answer(gold, extracted), the released
                package itself (mathruler 0.1.0, LaTeX parsed by pylatexenc). ZwZ sends everything
                else to its LLM judge (ZoomBench is not on its MCQ list): the rule settles only
                correct items, the rest is None
  jsonl, zoom   the project's formats: data.match_choice for choices, normalized equality else
                (one rule, both sets)

Reasoning blocks (`strip`, eval.py --strip-reasoning): "upstream" (default) does what each scorer
does by default: lmms-eval removes <think>...</think> AND <analysis>...</analysis> blocks before the
V* rule (drop_thinking); VLMEvalKit, MME-RealWorld's, MMStar's and ZwZ's scorers read the raw
output. "on" removes them everywhere: on HR-Bench as VLMEvalKit does with SPLIT_THINK=True
(split_thinking), elsewhere as lmms-eval does; "off" nowhere (V*: lmms-eval's --reasoning_tags
none). Only V* and HR-Bench have such a switch upstream; PROTOCOLS says which settings are official.

Strict rules, case by case against official (deliberate: read the answer a careful human would):
  all           the answer part only: after the last </think>, inside the last <answer>...</answer>
                (official: only V* drops reasoning; only ZwZ reads <answer>), surrounding
                whitespace dropped
  vstar         a capital A-D standing alone, never the first letter of a word: "Based on ... D"
                reads D (official: B); lower-case "b" is not a letter (official: B, it upper-cases)
  hrbench       one option letter as a token anywhere, no last-4-tokens limit and no "answer is X"
                clause ("D is the answer, sure" reads D; official: unsettled); option text as official
  mmerealworld  every prefix removed (official: two fused), a standalone A-E (official: the first
                capital anywhere, "Based" -> B); an empty response reads nothing (official: A)
  mmstar        the letter at MMStar's positions must stand alone ("cat" is not C; official: C)
  zoombench     normalized string equality, no mathruler (a LaTeX answer stays unsettled; official:
                grade_answer decides), no <answer> quirk; an MCQ may be settled by the letter it
                names (official: never, only the judge), so strict can say wrong where official
                says "judge"
Tests: python -m pytest -q tests/test_eval.py tests/test_answer_rules_parity.py
"""

import functools
import logging
import re

import data

RULES = ("official", "strict")
STRIP = ("upstream", "on", "off")
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
# Reasoning blocks, removed as upstream removes them (only where a scorer does, see `strip`).

LMMS_EVAL_REASONING_TAGS = (("<think>", "</think>"), ("<analysis>", "</analysis>"))  # --reasoning_tags default


def drop_thinking(text):
    """lmms-eval's strip_reasoning_tags (api/reasoning.py) with its default tag pairs: per pair, each
    closed block goes; a lone closing tag (the chat template opened the block) keeps what follows
    its last occurrence; an unclosed opening tag stays. The result is stripped of whitespace."""
    for start_tag, end_tag in LMMS_EVAL_REASONING_TAGS:
        while start_tag in text and end_tag in text:
            start = text.find(start_tag)
            end = text.find(end_tag, start)
            if end == -1:  # the only closing tag comes before the opening one
                break
            text = text[:start] + text[end + len(end_tag):]
        if end_tag in text and start_tag not in text:
            text = text.rsplit(end_tag, 1)[-1]
    return text.strip()


def split_thinking(text):
    """VLMEvalKit's split_thinking (inference.py, SPLIT_THINK=True): what follows the last </think>,
    stripped; a response without </think> unchanged (whitespace included)."""
    return text.split("</think>")[-1].strip() if "</think>" in text else text


def _reasoning_stripper(bench, strip):
    # The function applied to the raw response before the official rule, or None.
    if strip not in STRIP:
        raise ValueError(f"unknown strip {strip!r}; choose one of {STRIP}")
    if strip == "off" or (strip == "upstream" and bench != "vstar"):
        return None
    return split_thinking if bench == "hrbench" else drop_thinking


# ----------------------------------------------------------------------------------------------
# Official rules. Each gets the response exactly as its scorer gets it; letter rules return the
# letter they read (or None), MMStar's and ZoomBench's the (extracted, pred, verdict) triple.

VSTAR_PATTERNS = [r"^([A-D])\s*[\.)\]]*",                                  # starts with the letter
                  r"(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+([A-D])",  # "ANSWER: B"
                  r"\(([A-D])\)",                                           # "(B)" anywhere
                  r"([A-D])\s*(?:\.|\)|])",                                 # "B." "B)" "B]", also "RED."
                  r"(?:^|\s)([A-D])(?:\s|$)"]                               # a lone letter, also "A GLOVE"


def _vstar_official(text, ex):
    # Upper-cased first, so every word starting with A-D can match; IGNORECASE as upstream (it
    # matters for characters like U+0130, whose upper case is itself but which matches "I").
    up = text.strip().upper()
    letter = _first(VSTAR_PATTERNS, up, re.IGNORECASE)
    if letter is not None:
        return letter.upper()
    found = re.findall("[A-D]", up)  # then: the only A-D character of the whole response
    return found[0] if len(found) == 1 else None


VLMEVAL_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                    "I'm sorry, but without the image provided", "Cannot determine the answer")


def _vlmeval_option(text, letters):
    # can_infer_option: an option letter as a token (punctuation made space), or "Z", or None.
    if "Failed to obtain answer via API" in text:
        return None  # the API-failure marker: no letter is read, the option text still may be
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
    return None


def _hrbench_official(text, ex):
    letter = _vlmeval_option(text, _letters(ex))
    if letter:
        return letter
    # can_infer_text: in a response at most twice as long as all option texts together (its length
    # taken AFTER lower(), which lengthens e.g. U+0130), exactly one option text occurs.
    low = text.lower()
    if len(low) > 2 * sum(len(c) for c in ex.choices):
        return None
    named = [l for l, c in zip(_letters(ex), ex.choices) if c.lower() in low]
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
    # The strings as the file has them (meta "options"), else rebuilt from the option texts.
    options = ex.meta.get("options") or [f"({l}) {c}" for l, c in zip(_letters(ex), ex.choices)]
    for option in options:
        if s.lower() in option.lower():
            return option[1]
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
    if ex.answer.lower().strip() in reads:
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


@functools.cache
def _mathruler():
    # mathruler's grade_answer, imported on first use: it pulls in sympy (1.5 s on 2 busy cores),
    # which only ZoomBench's rule needs. pylatexenc, its LaTeX parser, logs a warning for every
    # "\\frac12"-like input; quieted.
    from mathruler.grader import grade_answer
    logging.getLogger("pylatexenc").setLevel(logging.ERROR)
    return grade_answer


def _zoombench_official(text, ex):
    extracted = _zwz_extract(text)
    # ZwZ calls grade_answer(gt, extracted), the gold in the `given` slot, with the gold as the file
    # stores it (meta["gold"]; ex.answer is its letter for an MCQ), and counts an exception as no.
    try:
        ok = _mathruler()(ex.meta.get("gold", ex.answer), extracted)
    except Exception:
        ok = False
    return extracted, (extracted if ok else None), (True if ok else None)


# ----------------------------------------------------------------------------------------------
# Strict rules (the project's reading, compared with official at the top of this file): the answer
# part only, and a letter counts only when it stands alone, never as the first letter of a word.

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


# For the report: the protocol each number follows. Per benchmark: the official scorer and the
# commit read; its reasoning stripping by default and the upstream option that switches it (None:
# the scorer has none); its judge stage (None: it has none, and why a judge here is not official).
PROTOCOLS = {
    "vstar": dict(scorer="lmms-eval tasks/vstar_bench extract_answer_letter @ 75571cfe",
                  strip_default="on", strip_switch="lmms-eval --reasoning_tags", judge=None,
                  no_judge="lmms-eval's V* scoring has no LLM stage; a response it cannot read is wrong"),
    "hrbench": dict(scorer="VLMEvalKit can_infer, exact matching @ e8e78f05 (today's rule; the HR-Bench authors' copy "
                           "@ b17b1998 reads a lone letter anywhere, has no 'answer is X' clause nor length limit, and "
                           "their own evaluate() asks a local LLM yes/no about every response)",
                    strip_default="off", strip_switch="VLMEvalKit SPLIT_THINK=True", judge=None,
                    no_judge="VLMEvalKit's fallback is a GPT model that maps the response to an option letter, "
                             "not a yes/no judge"),
    "mmerealworld": dict(scorer="MME-RealWorld evaluation/eval_your_results.py extract_characters_regex @ 87096fcf",
                         strip_default="off", strip_switch=None, judge=None,
                         no_judge="the official script has no LLM stage; an unread response is wrong"),
    "mmstar": dict(scorer="MMStar eval/vlmeval/evaluate/mmstar.py MMStar_eval @ 88f243ab",
                   strip_default="off", strip_switch=None, judge=None,
                   no_judge="MMStar_eval settles every non-hit as wrong"),
    "zoombench": dict(scorer="ZwZ mm-eval/judge_qwenlm.py @ fdc0ba1a + mathruler 0.1.0 grade_answer; "
                             "the rest is for the judge",
                      strip_default="off", strip_switch=None, judge="Qwen3-30B-A3B-Instruct-2507 (yes/no, greedy)",
                      no_judge="the strict rules are not ZwZ's"),
}
LETTER_RULES = {"official": {"vstar": _vstar_official, "hrbench": _hrbench_official, "mmerealworld": _mme_official},
                "strict": {"vstar": _vstar_strict, "hrbench": _hrbench_strict, "mmerealworld": _mme_strict,
                           "mmstar": _mmstar_strict}}
TRIPLE_RULES = {"official": {"mmstar": _mmstar_official, "zoombench": _zoombench_official},
                "strict": {"zoombench": _zoombench_strict}}


def protocol(bench, rules, strip, judge):
    """(rule-only line, rule + judge line or None) for results.md: the protocol the numbers follow,
    marked NOT official where they follow none."""
    p = PROTOCOLS.get(bench)
    if p is None:
        return "the project's rule for its own format", None
    if rules == "strict":
        rule = "the project's strict reading (answer part only, standalone letters): NOT an official protocol"
    else:
        on = strip == "on" or (strip == "upstream" and p["strip_default"] == "on")
        tags = "VLMEvalKit's split_thinking" if bench == "hrbench" else "lmms-eval's <think> and <analysis> tags"
        how = f"reasoning blocks removed ({tags})" if on else "reasoning blocks not removed (the raw output)"
        if on == (p["strip_default"] == "on"):
            note = "upstream's default"
        elif p["strip_switch"]:
            note = f"upstream's option {p['strip_switch']}"
        else:
            note = "NOT an official protocol: this scorer has no such option"
        rule = f"{p['scorer']}; {how}, {note}"
    if not judge:
        return rule, None
    if rules == "official" and p["judge"]:
        return rule, f"then judge {judge} on the unsettled items, ZwZ's protocol (its judge: {p['judge']})"
    return rule, f"then judge {judge} on the unsettled items: NOT an official protocol ({p['no_judge']})"


def verdict(bench, response, ex, rules="official", strip="upstream"):
    """(extracted text, prediction, verdict) for one response under `rules` ("official" or
    "strict") and `strip` (reasoning blocks, official rules only: "upstream", "on", "off");
    verdict None = no rule could settle it (counted wrong; a judge may decide)."""
    if ex.answer is None:
        raise ValueError(f"example {ex.id}: field answer: missing; evaluation needs the gold answer")
    if rules not in RULES:
        raise ValueError(f"unknown rules {rules!r}; choose one of {RULES}")
    if rules == "strict" and strip != "upstream":
        raise ValueError(f"strip {strip!r}: the strict rules always read the answer part only; use it with official")
    if bench in ("jsonl", "zoom"):  # the project's formats: one rule for both sets
        text = strip_reasoning(response)
        if ex.choices:  # the zoom world / project JSONL: the choice the answer names
            choice = data.match_choice(text, ex.choices)
            return text, choice, None if choice is None else choice == ex.answer
        return text, text, True if normalize(text) == normalize(ex.answer) else None
    if rules == "official":
        stripper = _reasoning_stripper(bench, strip)
        text = stripper(response) if stripper else response
    else:
        text = strip_reasoning(response)
    if bench in TRIPLE_RULES[rules]:
        return TRIPLE_RULES[rules][bench](text, ex)
    if bench not in LETTER_RULES[rules]:
        raise ValueError(f"no answer rule for benchmark {bench!r}")
    letter = LETTER_RULES[rules][bench](text, ex)
    return text, letter, None if letter is None else letter == ex.answer
