"""Token counting with each model's own tokenizer (Hugging Face ``tokenizers``), for the APIs."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping

from tokenizers import Tokenizer


class TokenCounter:
    """Counts tokens as the model's engine would; each tokenizer is loaded on first use.

    Args:
        tokenizer_files: model id -> path of its ``tokenizer.json`` on this node; models
            whose weights live in an object store have none here and cannot be counted.
    """

    def __init__(self, tokenizer_files: Mapping[str, str]):
        self._files = {m: Path(p) for m, p in tokenizer_files.items()}
        self._tokenizers: dict[str, Tokenizer] = {}
        self._lock = threading.Lock()

    def can_count(self, model_id: str) -> bool:
        """Whether this node has the model's tokenizer."""
        return model_id in self._files

    def count(self, model_id: str, text: str) -> int:
        """Tokens of ``text``, with the special tokens the tokenizer adds (as a completion prompt).

        Raises:
            KeyError: no tokenizer for this model (see ``can_count``).
        """
        tokenizer = self._tokenizers.get(model_id)
        if tokenizer is None:
            with self._lock:
                tokenizer = self._tokenizers.setdefault(model_id, Tokenizer.from_file(str(self._files[model_id])))
        return len(tokenizer.encode(text, add_special_tokens=True).ids)
