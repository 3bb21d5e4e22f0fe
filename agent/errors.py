"""The errors of the agent that a person can act on: configuration, an unreachable MLLM, unusable answers."""

from __future__ import annotations


class AgentError(RuntimeError):
    """The MLLM cannot be used as asked; the message says why and what to change."""


class AnswerError(ValueError):
    """An MLLM answer that cannot become a layout; the message is sent back to the model once."""
