"""The conversation as chat APIs take it: turns that alternate user / assistant, starting with
the user and ending with the question (consecutive lines of one speaker are joined)."""

from __future__ import annotations

from chatplane.agent.llm.base import Prompt, Speaker


def alternating_turns(prompt: Prompt) -> list[tuple[Speaker, str]]:
    """History then the question, as alternating (speaker, text) turns."""
    turns: list[tuple[Speaker, str]] = []
    lines = [(line.speaker, line.text) for line in prompt.history if line.text]
    for speaker, text in [*lines, (Speaker.USER, prompt.question)]:
        if not turns and speaker is not Speaker.USER:
            continue  # a history window can begin with an answer whose question fell out
        if turns and turns[-1][0] is speaker:
            turns[-1] = (speaker, f"{turns[-1][1]}\n\n{text}")
        else:
            turns.append((speaker, text))
    return turns
