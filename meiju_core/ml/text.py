"""Chinese transcript text: jieba segmentation, punctuation checks and fixes, character diffs.

Why punctuation matters here: the text features see punctuation (a ``？`` is a token of its own, and
the Track I paper refined transcripts by hand before training), while the transcripts that arrive
are uneven. CPED-style TV subtitles separate clauses with spaces and end with no mark
(``"我这堵着车 你倒睡着了"``); ASR output mixes half-width marks into Chinese text. This module finds
those cases (:func:`flags`), proposes a fix (:func:`suggest`), and tells a punctuation-only edit from
a lexical one (:func:`is_punctuation_only_change`) so the store can record each save with its kind.

All offsets are Python string indices (code points), ``[start, end)``.

The checks are rules, not a model: ``question_no_mark`` looks for question particles and words
(吗, 呢 at the end of a short clause, 什么, 怎么, 为什么, 谁, 哪, ...) and skips common non-question
uses (没什么, 哪怕, 天哪, 谁都, ...). On CPED's 11,137 validation subtitles, :func:`suggest` puts a
``？`` into 74.5 % of the lines labelled ``question`` and into 7.7 % of the others, many of them
rhetorical questions (``你管得着吗``) that take ``？`` in writing anyway (``tests/test_text.py``).
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import NamedTuple

import jieba

__all__ = [
    "DiffOp",
    "Flag",
    "char_diff",
    "flags",
    "has_html",
    "is_punct",
    "is_punctuation_only_change",
    "is_question",
    "normalize_punctuation",
    "segment",
    "suggest",
    "tokenize",
]

# --- jieba, loaded once --------------------------------------------------------------------------

_jieba_lock = threading.Lock()
_jieba_ready = False


def _ensure_jieba() -> None:
    """Load jieba's dictionary once per process (about 1 s the first time), quietly."""
    global _jieba_ready
    if _jieba_ready:
        return
    with _jieba_lock:
        if not _jieba_ready:
            jieba.setLogLevel(logging.WARNING)
            jieba.initialize()
            _jieba_ready = True


def segment(text: str) -> list[str]:
    """Split ``text`` into jieba words for display; nothing is dropped.

    Punctuation marks and whitespace come back as tokens of their own, so
    ``"".join(segment(text)) == text``. Returns ``[]`` for an empty string.

    >>> segment("撞车了吗？")
    ['撞车', '了', '吗', '？']
    """
    if not text:
        return []
    _ensure_jieba()
    return jieba.lcut(text)


def tokenize(text: str) -> list[str]:
    """Tokens for the text features: jieba words, punctuation kept, whitespace dropped.

    Every punctuation mark, full-width (``，。？``) or half-width (``,.?``), is a token of its own;
    runs of whitespace are dropped. Numbers such as ``3.5`` stay one token.

    >>> tokenize("我这堵着车 你倒睡着了。")
    ['我', '这', '堵', '着', '车', '你', '倒', '睡着', '了', '。']
    """
    out: list[str] = []
    for tok in segment(text):
        if tok.isspace():
            continue
        if len(tok) > 1 and all(is_punct(c) for c in tok):
            out.extend(tok)  # "？！" -> "？", "！"
        else:
            out.append(tok)
    return out


# --- character classes ---------------------------------------------------------------------------

HALF_TO_FULL = {",": "，", ".": "。", "?": "？", "!": "！", ":": "：", ";": "；"}
_FINAL = set("。？！….?!")  # marks that may end a sentence
_CLOSERS = set("”’」』）)】》\"'")  # may follow the final mark: 他说：“好。”
_PAUSE = set("，、；：")
_SENTENCE_MARKS = set("，。、；：？！")  # the marks that are collapsed when doubled
# strength order when a run mixes marks: "，。" -> "。", "。？" -> "？"
_STRENGTH = "、，：；。！？"


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0x20000 <= o <= 0x2FA1F
        or 0xF900 <= o <= 0xFAFF
    )


def is_punct(ch: str) -> bool:
    """Unicode punctuation (P*) plus the symbols used as punctuation in Chinese text (～ ~ ·)."""
    return unicodedata.category(ch).startswith("P") or ch in "～~·`^|"


def _halfwidth_positions(text: str) -> list[int]:
    """Indices of half-width marks that sit in Chinese context (so should be full-width).

    A mark counts when the nearest non-space character before it is CJK or a full-width mark, or
    the one after it is CJK; never between two digits (``3.5``), never in ``...`` or a URL-like run.
    """
    out = []
    n = len(text)
    for i, ch in enumerate(text):
        if ch not in HALF_TO_FULL:
            continue
        prev = text[i - 1] if i > 0 else ""
        nxt = text[i + 1] if i + 1 < n else ""
        if prev.isdigit() and nxt.isdigit():
            continue  # 3.5, 10:30, 1,000
        if ch == "." and ("." in (prev, nxt)):
            continue  # "..." is an ellipsis, handled as-is
        j = i - 1  # nearest character before, skipping spaces and other half-width marks
        while j >= 0 and (text[j].isspace() or text[j] in HALF_TO_FULL):
            j -= 1
        before = text[j] if j >= 0 else ""
        k = i + 1
        while k < n and (text[k].isspace() or text[k] in HALF_TO_FULL):
            k += 1
        after = text[k] if k < n else ""
        cjk_before = bool(before) and (_is_cjk(before) or before in _SENTENCE_MARKS)
        cjk_after = bool(after) and _is_cjk(after)
        if cjk_before or cjk_after:
            out.append(i)
    return out


_RUN = re.compile(r"[，。、；：？！]{2,}")


def _collapse_run(run: str) -> str:
    """One mark for a run: the same mark once, or the strongest of a mix ("，。" -> "。").

    "？！" and "！？" are kept: they are an accepted way to mark an exclamatory question.
    """
    if set(run) <= {"？", "！"} and len(set(run)) == 2:
        return "？！" if run.index("？") < run.index("！") else "！？"
    return max(set(run), key=_STRENGTH.index)


def _doubled_runs(text: str) -> list[tuple[int, int, str]]:
    """(start, end, replacement) for each run of sentence marks that should be one mark."""
    out = []
    for m in _RUN.finditer(text):
        repl = _collapse_run(m.group())
        if repl != m.group():
            out.append((m.start(), m.end(), repl))
    return out


def _fix_widths(text: str) -> str:
    """Half-width marks in Chinese context made full-width; same length as ``text``."""
    chars = list(text)
    for i in _halfwidth_positions(text):
        chars[i] = HALF_TO_FULL[chars[i]]
    return "".join(chars)


def normalize_punctuation(text: str) -> str:
    """Fix punctuation widths and doubled marks; words, spaces and other marks are untouched.

    - Half-width ``, . ? ! : ;`` in Chinese context become ``，。？！：；`` (``3.5``, ``10:30``,
      ``OK.`` after Latin text and ``...`` are left alone).
    - A run of sentence marks becomes one: ``。。`` -> ``。``, ``，，`` -> ``，``, ``，。`` -> ``。``
      (the strongest mark wins; ``？！`` is kept).

    >>> normalize_punctuation("好,我知道了..真的吗??")
    '好，我知道了..真的吗？'
    """
    text = _fix_widths(text)
    for start, end, repl in reversed(_doubled_runs(text)):
        text = text[:start] + repl + text[end:]
    return text


# --- questions -----------------------------------------------------------------------------------

_QUESTION_WORDS = ("什么", "怎么", "为什么", "为啥", "干嘛", "干吗", "谁", "哪", "几点")
# common uses of those words that do not ask anything
_NOT_QUESTION = re.compile(
    r"没什么|什么都|什么也|不怎么|怎么也|怎么都|谁都|谁也|哪怕|天哪|哪儿都|哪里都|哪都|哪哪|"
    r"吗啡|不管|无论|不知道|知道.{0,6}(什么|怎么|为什么|谁|哪)|或多或少|多多少少|"
    r"(什么|怎么|谁|哪).{0,2}[都也]"
)
_QUESTION_FORMS = re.compile(
    r"(.)不\1|(..)不\2|(.)没\3|有没有|难道|难不成|真的假的|(是|对)吧$|没有$|了没$|多少钱|多少.?$"
)
_TRAILING_INTERJECTION = re.compile(r"[啊呀啦哦喔嘛吧]+$")


def is_question(clause: str) -> bool:
    """True when a clause (text between marks) reads as a question.

    Signals: the particle 吗 anywhere (``好意思吗你``); 呢 ending a clause of at most four
    characters (``你呢``, ``然后呢``) or one with a question word; an A-not-A form (``是不是``,
    ``有没有``, ``顺溜不顺溜``); a tag (``…是吧``, ``…没有``); 难道; 多少 ending a clause or 多少钱;
    a question word (什么, 怎么, 为什么, 为啥, 干嘛, 谁, 哪, 几点). Known non-question uses are
    removed first (没什么, 哪怕, 天哪, 谁都, 怎么劝都, 不知道…什么, ...). A heuristic: see the
    module docstring for how it does on CPED.
    """
    c = re.sub(r"\s+", "", clause)
    c = "".join(ch for ch in c if not is_punct(ch))
    if not c:
        return False
    plain = _NOT_QUESTION.sub("", c)
    if "吗" in plain:
        return True
    has_word = any(w in plain for w in _QUESTION_WORDS)
    core = _TRAILING_INTERJECTION.sub("", plain) or plain
    if core.endswith("呢") and (len(core) <= 4 or has_word):
        return True
    if _QUESTION_FORMS.search(plain) or _QUESTION_FORMS.search(core):
        return True
    return has_word


# --- clauses --------------------------------------------------------------------------------------


class _Clause(NamedTuple):
    start: int  # body [start, end)
    end: int
    term: str  # terminator text: marks, whitespace, or "" at the end of the text
    term_end: int


def _clauses(text: str) -> list[_Clause]:
    """Split into clause bodies and their terminators (a run of full-width marks or whitespace)."""
    out = []
    pos = 0
    for m in re.finditer(r"[，。、；：？！…]+[”’」』）)】》]*|\s+", text):
        out.append(_Clause(pos, m.start(), m.group(), m.end()))
        pos = m.end()
    out.append(_Clause(pos, len(text), "", len(text)))
    return [c for c in out if c.end > c.start or c.term]


def _between_cjk(text: str, start: int, end: int) -> bool:
    return start > 0 and end < len(text) and _is_cjk(text[start - 1]) and _is_cjk(text[end])


def _final_state(text: str) -> tuple[int, int, str] | None:
    """Where a final mark is missing or wrong: (start, end, what is there) or None if fine.

    Only for text with Chinese characters; closing quotes and brackets after the mark are skipped.
    """
    stripped = text.rstrip()
    if not any(_is_cjk(c) for c in stripped):
        return None
    j = len(stripped)
    while j > 0 and stripped[j - 1] in _CLOSERS:
        j -= 1
    if j == 0:
        return None
    last = stripped[j - 1]
    if last in _FINAL:
        return None
    if last in _PAUSE or last in HALF_TO_FULL:
        k = j - 1
        while k > 0 and (stripped[k - 1] in _PAUSE or stripped[k - 1] in HALF_TO_FULL):
            k -= 1
        return (k, j, stripped[k:j])
    return (j, j, "")


# --- flags ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """One punctuation problem in a transcript.

    ``span`` is ``(start, end)`` in the text, and ``suggestion`` the text to put there instead
    (``start == end`` means insert). Codes:

    - ``doubled_punct``: a run such as ``。。`` or ``，，``;
    - ``halfwidth_punct``: ``, . ? ! : ;`` in Chinese context;
    - ``no_final_mark``: Chinese text that does not end with ``。？！…``;
    - ``question_no_mark``: a question clause (see :func:`is_question`) ended by a space, ``。``
      or nothing;
    - ``space_as_punct``: whitespace between two Chinese characters used as a clause break (CPED).
    """

    code: str
    message: str
    span: tuple[int, int]
    suggestion: str


def flags(text: str) -> list[Flag]:
    """All punctuation flags of ``text``, sorted by position.

    Flags never overlap unless they share a span, and flags on one span carry one suggestion;
    applying every flag's ``(span, suggestion)`` to whitespace-trimmed text gives
    :func:`suggest`'s result (up to spaces next to full-width marks, which ``suggest`` drops).

    >>> [f.code for f in flags("撞车了吗")]
    ['no_final_mark', 'question_no_mark']
    """
    wide = _fix_widths(text)  # same length as text: indices are shared
    doubled = _doubled_runs(wide)
    clause = _clause_flags(wide)
    fix = {f.span: f.suggestion for f in clause}  # clause-level fixes decide a shared span
    found = list(clause)
    for start, end, repl in doubled:
        span = (start, end)
        msg = f"doubled mark {text[start:end]!r}"
        found.append(Flag("doubled_punct", msg, span, fix.get(span, repl)))
    in_run = {i for start, end, _ in doubled for i in range(start, end)}
    for i in _halfwidth_positions(text):
        if i in in_run:
            continue  # the doubled_punct flag covers it
        span = (i, i + 1)
        msg = f"half-width {text[i]!r} in Chinese text"
        found.append(Flag("halfwidth_punct", msg, span, fix.get(span, HALF_TO_FULL[text[i]])))
    return sorted(found, key=lambda f: (f.span, f.code))


def _clause_flags(text: str) -> list[Flag]:
    """``space_as_punct``, ``question_no_mark`` and ``no_final_mark`` on width-fixed text."""
    out: list[Flag] = []
    clauses = _clauses(text)
    for n, cl in enumerate(clauses):
        body = text[cl.start : cl.end]
        span = (cl.end, cl.term_end)
        is_last = n == len(clauses) - 1 or not text[cl.term_end :].strip()
        if cl.term.isspace() and not is_last and _between_cjk(text, cl.end, cl.term_end):
            question = is_question(body)
            out.append(
                Flag(
                    "space_as_punct",
                    "space used as a clause break",
                    span,
                    "？" if question else "，",
                )
            )
            if question:
                out.append(_question_flag(body, span))
        elif cl.term and set(cl.term) <= {"。"} and is_question(body):
            out.append(_question_flag(body, span))
    final = _final_state(text)
    if final is not None:
        start, end, there = final
        body = text[_clause_start(text, start) : start]
        mark = "？" if is_question(body) else "。"
        what = f"ends with {there!r}, not a final mark" if there else "no final mark"
        out.append(Flag("no_final_mark", what, (start, end), mark))
        if mark == "？":
            out.append(_question_flag(body, (start, end)))
    return out


def _clause_start(text: str, end: int) -> int:
    """Start of the clause that ends at ``end`` (just after the previous mark or space)."""
    i = end
    while i > 0 and not (text[i - 1] in _SENTENCE_MARKS or text[i - 1].isspace()):
        i -= 1
    return i


def _question_flag(body: str, span: tuple[int, int]) -> Flag:
    return Flag("question_no_mark", f"question {body.strip()!r} has no question mark", span, "？")


def _apply(text: str, edits: list[Flag]) -> str:
    """Apply flag edits right to left; one edit per span (flags on a span agree)."""
    by_span = {f.span: f.suggestion for f in edits}
    out = text
    for (start, end), repl in sorted(by_span.items(), reverse=True):
        out = out[:start] + repl + out[end:]
    return out


def suggest(text: str) -> str:
    """A rule-based full punctuation fix of a Chinese transcript.

    Whitespace between two Chinese clauses becomes ``，`` (``？`` after a question clause),
    half-width marks in Chinese context become full-width, doubled marks collapse, ``。`` after a
    question becomes ``？``, and the text gets a final ``。`` or ``？`` (replacing a trailing ``，``).
    Leading and trailing whitespace is removed. Text without Chinese characters only loses its
    outer whitespace. ``flags(suggest(t)) == []`` for every CPED line.

    >>> suggest("我这堵着车 你倒睡着了")
    '我这堵着车，你倒睡着了。'
    >>> suggest("撞车了吗")
    '撞车了吗？'
    """
    text = text.strip()
    if not text:
        return ""
    out = normalize_punctuation(text)
    out = _SPACE_AROUND_MARK.sub(r"\1", out)
    # clause edits are computed on normalised text, so apply them after the width/double fixes
    return _apply(out, _clause_flags(out))


_SPACE_AROUND_MARK = re.compile(r"\s*([，。、；：？！])\s*")


# --- edits ----------------------------------------------------------------------------------------


def _letters(text: str) -> str:
    return "".join(c for c in text if not (c.isspace() or is_punct(c)))


def is_punctuation_only_change(before: str, after: str) -> bool:
    """True when ``before`` and ``after`` differ only in punctuation and whitespace.

    Both are compared with every punctuation mark (Unicode P*, plus ～ ~ ·) and whitespace
    removed; equal strings count as punctuation-only (no lexical change).

    >>> is_punctuation_only_change("我这堵着车 你倒睡着了", "我这堵着车，你倒睡着了。")
    True
    >>> is_punctuation_only_change("撞车了吗", "撞车了嘛？")
    False
    """
    return _letters(before) == _letters(after)


class DiffOp(NamedTuple):
    """One step of a character diff: ``op`` is equal, insert, delete or replace.

    ``before`` is the old text of the step ("" for insert), ``after`` the new text ("" for
    delete); for equal they are the same.
    """

    op: str
    before: str
    after: str


def char_diff(before: str, after: str) -> list[DiffOp]:
    """Character-level diff (``difflib.SequenceMatcher``, autojunk off).

    Round trip: ``"".join(d.before for d in ops) == before`` and
    ``"".join(d.after for d in ops) == after``.

    >>> char_diff("撞车了吗", "撞车了吗？")
    [DiffOp(op='equal', before='撞车了吗', after='撞车了吗'), DiffOp(op='insert', before='', after='？')]
    """
    sm = difflib.SequenceMatcher(None, before, after, autojunk=False)
    return [DiffOp(tag, before[i1:i2], after[j1:j2]) for tag, i1, i2, j1, j2 in sm.get_opcodes()]


_TAG_START = re.compile(r"<[A-Za-z!/?]")  # what an HTML parser would read as markup


class _MarkupFinder(HTMLParser):
    """Records whether the standard library's HTML parser sees any markup at all."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.found = False

    def _hit(self, *_args: object) -> None:
        self.found = True

    handle_starttag = handle_startendtag = handle_endtag = _hit
    handle_entityref = handle_charref = handle_comment = _hit
    handle_decl = handle_pi = unknown_decl = _hit


def has_html(text: str) -> bool:
    """True if ``text`` holds HTML/XML markup as a real HTML parser (``html.parser``) reads it: a
    tag (``<b>``, ``</i>``, ``<br/>``, ``<svg/onload=...>``, an unclosed ``<img src=x ...``), a
    comment, a declaration or an entity (``&nbsp;``, ``&#12290;``). Subtitles exported with
    markup are refused on import, and so is anything a browser could run.

    >>> has_html("你好<br/>世界"), has_html("3 < 5 且 a&b"), has_html("<svg/onload=alert(1)>")
    (True, False, True)
    """
    if "<" not in text and "&" not in text:
        return False
    finder = _MarkupFinder()
    finder.feed(text)
    finder.close()
    return finder.found or bool(_TAG_START.search(text))
