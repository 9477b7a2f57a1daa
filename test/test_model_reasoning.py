"""Reasoning format and the never-crashing generation parser."""

from hypothesis import given, settings
from hypothesis import strategies as st

from roboalign_ros.model.reasoning import (
    ACTION_END,
    ACTION_START,
    ANSWER_END,
    ANSWER_START,
    THINK_END,
    THINK_START,
    format_target,
    parse_generation,
)

TAGS = [THINK_START, THINK_END, ANSWER_START, ANSWER_END, ACTION_START, ACTION_END,
        "<ACT_3>", "<ACT_999999>", "<ACT_>", "<ACT_-1>", "<|im_end|>"]
safe_text = st.text(st.characters(blacklist_characters="<>"), max_size=60)


@settings(max_examples=100, deadline=None)
@given(reasoning=safe_text, ids=st.lists(st.integers(0, 255), min_size=1, max_size=40))
def test_format_parse_round_trip(reasoning, ids):
    parsed = parse_generation(format_target(reasoning, ids), num_action_tokens=256)
    assert parsed.format_ok, parsed.problems
    assert parsed.reasoning == reasoning.strip()
    assert parsed.action_tokens == ids


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.one_of(st.sampled_from(TAGS), st.text(max_size=12)), max_size=20))
def test_parser_never_crashes(parts):
    parsed = parse_generation("".join(parts), num_action_tokens=256)
    assert isinstance(parsed.problems, list)
    assert all(0 <= i < 256 for i in parsed.action_tokens)
    assert parsed.format_ok == (not parsed.problems)


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(0, 99), min_size=1, max_size=30), cut=st.integers(0, 400))
def test_truncated_generation_is_reported(ids, cut):
    text = format_target("move left", ids)
    parsed = parse_generation(text[:cut], num_action_tokens=100)
    if cut < len(text):
        assert not parsed.format_ok
    assert parsed.action_tokens == ids[: len(parsed.action_tokens)]


def test_specific_malformations():
    assert parse_generation(None).problems == ["generation is not text: NoneType"]
    empty = parse_generation("<think>x</think><answer><ACTION_START><ACTION_END></answer>")
    assert empty.reasoning == "x" and empty.problems == ["no action tokens"]
    unknown = parse_generation(
        "<think></think><answer><ACTION_START><ACT_1>junk<ACT_500><ACTION_END></answer>", 100)
    assert unknown.action_tokens == [1]
    assert any("junk" in p for p in unknown.problems)
    assert any("<ACT_500>" in p for p in unknown.problems)
    no_answer = parse_generation("<think>r</think><ACTION_START><ACT_2><ACTION_END>")
    assert no_answer.action_tokens == [2] and "missing <answer>" in no_answer.problems
    trailing = parse_generation(format_target("r", [1]) + "more")
    assert any("after </answer>" in p for p in trailing.problems)
