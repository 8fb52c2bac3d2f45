"""meiju_core.ml.text on real CPED subtitles (11,137 lines, mostly spaces instead of punctuation)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from meiju_core.ml import text as T

CPED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cped" / "valid_split.csv"


@pytest.fixture(scope="module")
def cped() -> list[dict[str, str]]:
    with open(CPED, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11137
    return rows


@pytest.fixture(scope="module")
def lines(cped) -> list[str]:
    return [r["Utterance"] for r in cped]


# --- segmentation --------------------------------------------------------------------------------


def test_tokenize_keeps_punctuation_and_drops_spaces():
    assert T.tokenize("我这堵着车 你倒睡着了。") == [
        "我", "这", "堵", "着", "车", "你", "倒", "睡着", "了", "。",
    ]  # fmt: skip
    toks = T.tokenize("好,吗?  真的？！")
    assert {",", "?", "？", "！"} <= set(toks)
    assert not any(t.isspace() for t in toks)
    assert "3.5" in T.tokenize("版本3.5的价格")
    assert T.tokenize("") == [] and T.tokenize("   ") == []


def test_tokenize_splits_runs_of_marks():
    assert T.tokenize("什么？！……")[-4:] == ["？", "！", "…", "…"]


def test_segment_is_lossless_on_cped(lines):
    for line in lines[:2000]:
        assert "".join(T.segment(line)) == line


# --- punctuation ---------------------------------------------------------------------------------


def test_suggest_on_cped_examples():
    assert T.suggest("我这堵着车 你倒睡着了") == "我这堵着车，你倒睡着了。"
    assert T.suggest("撞车了吗") == "撞车了吗？"
    assert T.suggest("好意思吗你") == "好意思吗你？"
    assert T.suggest("怎么了 你说话啊") == "怎么了？你说话啊。"
    assert T.suggest("别闹了 我刚才梦见你们堵门 管彭凯旋要红包") == (
        "别闹了，我刚才梦见你们堵门，管彭凯旋要红包。"
    )
    assert T.suggest("  ") == ""
    assert T.suggest("hello world") == "hello world"  # no Chinese: nothing to punctuate


def test_normalize_punctuation_widths_and_doubles():
    assert T.normalize_punctuation("好,我知道了.") == "好，我知道了。"
    assert T.normalize_punctuation("真的吗??") == "真的吗？"
    assert T.normalize_punctuation("你去哪。。") == "你去哪。"
    assert T.normalize_punctuation("你好，，再见") == "你好，再见"
    assert T.normalize_punctuation("你好，。") == "你好。"  # the stronger mark wins
    assert T.normalize_punctuation("什么？！") == "什么？！"  # an accepted pair
    # numbers and Latin text are left alone
    assert T.normalize_punctuation("版本3.5,价格10:30") == "版本3.5，价格10:30"
    assert T.normalize_punctuation("I said OK. Fine") == "I said OK. Fine"
    assert T.normalize_punctuation("等等...") == "等等..."


def codes(text):
    return sorted({f.code for f in T.flags(text)})


def test_flag_codes():
    assert codes("我这堵着车 你倒睡着了") == ["no_final_mark", "space_as_punct"]
    assert codes("撞车了吗") == ["no_final_mark", "question_no_mark"]
    assert codes("撞车了吗。") == ["question_no_mark"]
    assert codes("好,我知道了。") == ["halfwidth_punct"]
    assert codes("我知道了。。") == ["doubled_punct"]
    assert codes("撞车了吗？") == []
    assert codes("他说：“好。”") == []  # a closing quote after the final mark


def test_flag_spans_and_suggestions():
    text = "我这堵着车 你倒睡着了"
    space, final = T.flags(text)
    assert (space.code, space.span, space.suggestion) == ("space_as_punct", (5, 6), "，")
    assert (final.code, final.span, final.suggestion) == ("no_final_mark", (11, 11), "。")
    (half,) = T.flags("好,我知道了。")
    assert half.span == (1, 2) and half.suggestion == "，" and "','" in half.message
    # one span, one suggestion: the doubled 。。 after a question becomes ？
    assert {f.suggestion for f in T.flags("你去哪。。")} == {"？"}


def test_question_detection():
    for q in ("撞车了吗", "你呢", "然后呢", "你怎么这么久都不理我", "顺溜不顺溜", "你说是吧"):
        assert T.is_question(q), q
    for s in ("没什么", "哪怕下雨", "天哪", "谁都知道", "多少女人虎视眈眈地盯着他呢", "我知道了"):
        assert not T.is_question(s), s


def test_question_rule_against_cped_dialogue_acts(cped):
    """The rule finds most CPED lines labelled 'question' and few of the others."""
    hits = {True: [0, 0], False: [0, 0]}
    for r in cped:
        asked = "？" in T.suggest(r["Utterance"])
        hits[r["DA"] == "question"][asked] += 1
    recall = hits[True][1] / sum(hits[True])
    false_rate = hits[False][1] / sum(hits[False])
    assert recall > 0.70 and false_rate < 0.10, (recall, false_rate)


def test_suggest_is_a_fixed_point_on_all_cped_lines(lines):
    """After suggest() nothing is flagged and a second pass changes nothing."""
    for line in lines:
        fixed = T.suggest(line)
        assert T.flags(fixed) == [], (line, fixed)
        assert T.suggest(fixed) == fixed


def test_applying_flags_gives_the_suggestion(lines):
    checked = 0
    for line in lines:
        if line != line.strip() or "  " in line:
            continue
        edits = {f.span: f.suggestion for f in T.flags(line)}
        out = line
        for (start, end), repl in sorted(edits.items(), reverse=True):
            out = out[:start] + repl + out[end:]
        if any(m + " " in line for m in "，。？！"):
            continue  # suggest() also drops spaces next to full-width marks
        assert out == T.suggest(line), line
        checked += 1
    assert checked > 10000


def test_most_cped_lines_are_flagged(lines):
    flagged = sum(bool(T.flags(line)) for line in lines)
    assert flagged / len(lines) > 0.9  # subtitles: no final marks, spaces between clauses


# --- edits ---------------------------------------------------------------------------------------


def test_punctuation_only_change(lines):
    for line in lines[:3000]:
        assert T.is_punctuation_only_change(line, T.suggest(line))
    assert T.is_punctuation_only_change("好,我", "好，我。")
    assert not T.is_punctuation_only_change("撞车了吗", "撞车了嘛？")
    assert not T.is_punctuation_only_change("我这堵着车", "我这堵着")
    assert T.is_punctuation_only_change("", " 。")


def test_char_diff_round_trips(lines):
    pairs = [(line, T.suggest(line)) for line in lines[:1000]]
    pairs += [("撞车了吗", "撞车了嘛？"), ("", "新的"), ("删掉", ""), ("一样", "一样")]
    for before, after in pairs:
        ops = T.char_diff(before, after)
        assert "".join(d.before for d in ops) == before
        assert "".join(d.after for d in ops) == after
        assert {d.op for d in ops} <= {"equal", "insert", "delete", "replace"}
    assert T.char_diff("撞车了吗", "撞车了嘛？") == [
        T.DiffOp("equal", "撞车了", "撞车了"),
        T.DiffOp("replace", "吗", "嘛？"),
    ]
    assert T.char_diff("我这堵着车 你", "我这堵着车，你")[1] == T.DiffOp("replace", " ", "，")


def test_has_html(lines):
    for markup in ("<b>你好</b>", "你好</i>", "第一行<br/>第二行", "你好&nbsp;世界", "&#12290;",
                   '<font color="red">红</font>', "<BR>"):  # fmt: skip
        assert T.has_html(markup), markup
    for plain in ("3 < 5 且 a&b", "你好", "<<书名>>", "A & B;", "《红楼梦》"):
        assert not T.has_html(plain), plain
    assert not any(T.has_html(line) for line in lines)
