"""Prompt sizes at admission, with each model's own tokenizer (``tokenizers``).

Admission reserves a request's tokens before the engine has tokenized it. Counting with
the model's ``tokenizer.json`` plus a few tokens per chat message for the template gives
a close figure for the ``max_prompt_tokens`` cap; the quota is settled afterwards with the
engine's exact usage. A model whose tokenizer is not on the ingress's disk (weights in an
object store) is estimated at one token per 3 bytes of UTF-8, which overestimates for
European languages: reservations err on the safe side.
"""

from __future__ import annotations

from typing import Any, Mapping

from serving.admission.token_counter import TokenCounter

# Chat templates wrap each message in role markers: ~4 tokens for Llama/Mistral-style
# templates, plus a few to open the assistant's turn.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_CHAT = 3
BYTES_PER_TOKEN_ESTIMATE = 3


class PromptTokenCounter:
    """Counts prompt tokens per model id, with the tokenizers this node has.

    Args:
        counter: the models' tokenizers (shared with the gRPC API's token counting).
    """

    def __init__(self, counter: TokenCounter):
        self._counter = counter

    def count_text(self, model_id: str, text: str) -> int:
        if not self._counter.can_count(model_id):
            return -(-len(text.encode()) // BYTES_PER_TOKEN_ESTIMATE)
        return self._counter.count(model_id, text)

    def count_chat(self, model_id: str, messages: list[Mapping[str, Any]]) -> int:
        """Tokens of the messages' text and their template markers."""
        total = TOKENS_PER_CHAT
        for message in messages:
            total += TOKENS_PER_MESSAGE + self.count_text(model_id, _message_text(message))
        return total

    def count_completion(self, model_id: str, prompt: Any) -> int:
        """Tokens of a completion prompt: a string, token ids, or a list of either."""
        if isinstance(prompt, str):
            return self.count_text(model_id, prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        if isinstance(prompt, list):
            return sum(self.count_completion(model_id, p) for p in prompt)
        return 0


def _message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text counts toward the prompt here
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""
