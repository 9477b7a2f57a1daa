"""Reasoning output format: ``<think>...</think><answer><ACTION_START>...<ACTION_END></answer>``.

The MLLM writes its reasoning between ``<think>`` tags, then the action as extra vocabulary
tokens ``<ACT_i>`` (i = local action-token index) between ``<ACTION_START>``/``<ACTION_END>``
inside ``<answer>``. :func:`parse_generation` never raises: whatever it cannot read becomes an
entry of ``ParsedGeneration.problems`` and ``format_ok`` is False.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

THINK_START, THINK_END = "<think>", "</think>"
ANSWER_START, ANSWER_END = "<answer>", "</answer>"
ACTION_START, ACTION_END = "<ACTION_START>", "<ACTION_END>"
ACTION_TOKEN_FORMAT = "<ACT_{}>"
_ACT_RE = re.compile(r"<ACT_(\d{1,9})>")

# ReFineVLA's four rationale sections, each opened by its tag (closing tags optional)
SECTIONS = ("Observation", "Situation Analysis", "Spatial Reasoning", "Task Planning")
_SECTION_RE = re.compile("<(" + "|".join(SECTIONS) + ")>")


def section_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of each rationale section found in ``text``: tag to the next tag.

    A section ends at the next section tag, ``</think>`` or the end of the text.
    """
    marks = [(m.start(), m.group(1)) for m in _SECTION_RE.finditer(text)]
    end = text.find(THINK_END)
    end = len(text) if end < 0 else end
    spans = {}
    for i, (start, name) in enumerate(marks):
        if start >= end:
            break
        stop = marks[i + 1][0] if i + 1 < len(marks) else end
        spans.setdefault(name, (start, min(stop, end)))
    return spans


def action_token_strings(vocab_size: int) -> list[str]:
    """The MLLM vocabulary additions for ``vocab_size`` action tokens (without start/end)."""
    return [ACTION_TOKEN_FORMAT.format(i) for i in range(vocab_size)]


def format_actions(action_token_ids) -> str:
    """``<ACTION_START><ACT_3><ACT_17><ACTION_END>`` for local ids [3, 17]."""
    return ACTION_START + "".join(ACTION_TOKEN_FORMAT.format(int(i)) for i in action_token_ids) \
        + ACTION_END


def format_target(reasoning: str | None, action_token_ids) -> str:
    """The assistant text the MLLM is trained to produce (SFT target / GRPO reference).

    ``reasoning=None`` gives an empty think block, so the format is the same with and
    without reasoning. The chat template adds the end-of-turn token after it.
    """
    return (f"{THINK_START}{(reasoning or '').strip()}{THINK_END}"
            f"{ANSWER_START}{format_actions(action_token_ids)}{ANSWER_END}")


@dataclass
class ParsedGeneration:
    """What could be read from one generation.

    ``reasoning`` is None when no think block was found; ``action_tokens`` are local indices
    (possibly empty); ``format_ok`` is True iff the text followed the format exactly (the
    RoboAlign format reward); ``problems`` lists every deviation in reading order.
    """

    reasoning: str | None = None
    action_tokens: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def format_ok(self) -> bool:
        """True when the generation matched the format with no problems."""
        return not self.problems


def _between(text: str, start: str, end: str, what: str, problems: list[str]):
    """Return (inside, rest) for the first ``start...end`` block; tolerate missing tags."""
    i = text.find(start)
    if i < 0:
        problems.append(f"missing {start}")
        return None, text
    if text[:i].strip():
        problems.append(f"text before {start}: {text[:i].strip()[:40]!r}")
    j = text.find(end, i + len(start))
    if j < 0:
        problems.append(f"missing {end} ({what} truncated)")
        return text[i + len(start):], ""
    return text[i + len(start):j], text[j + len(end):]


def parse_generation(text, num_action_tokens: int | None = None) -> ParsedGeneration:
    """Parse a decoded generation (special tokens kept, end-of-turn tokens stripped).

    ``text`` must start at the beginning of the assistant turn (include the ``<think>`` the
    prompt may have pre-filled). ``num_action_tokens``, if given, flags indices outside the
    vocabulary as unknown (they are dropped).
    """
    out = ParsedGeneration()
    if not isinstance(text, str):
        out.problems.append(f"generation is not text: {type(text).__name__}")
        return out
    reasoning, rest = _between(text, THINK_START, THINK_END, "reasoning", out.problems)
    if reasoning is not None:
        out.reasoning = reasoning.strip()
    answer, tail = _between(rest, ANSWER_START, ANSWER_END, "answer", out.problems)
    if tail.strip():
        out.problems.append(f"text after {ANSWER_END}: {tail.strip()[:40]!r}")
    if answer is None:
        # no answer block: still try to recover actions from anywhere after the reasoning
        answer = rest if ACTION_START in rest else ""
    actions, extra = _between(answer, ACTION_START, ACTION_END, "actions", out.problems)
    if extra.strip():
        out.problems.append(f"text after {ACTION_END}: {extra.strip()[:40]!r}")
    if actions is None:
        return out
    pos = 0
    for m in _ACT_RE.finditer(actions):
        if actions[pos:m.start()].strip():
            out.problems.append(f"unknown content in actions: {actions[pos:m.start()][:40]!r}")
        pos = m.end()
        idx = int(m.group(1))
        if num_action_tokens is not None and idx >= num_action_tokens:
            out.problems.append(f"unknown action token <ACT_{idx}>: dropped")
            continue
        out.action_tokens.append(idx)
    if actions[pos:].strip():
        out.problems.append(f"unknown content in actions: {actions[pos:][:40]!r}")
    if not out.action_tokens:
        out.problems.append("no action tokens")
    return out
