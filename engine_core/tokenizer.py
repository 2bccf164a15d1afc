"""The model's tokenizer, for every process that needs one (frontend, detokenizer, tests).

Lives apart from the model loader so that loading a tokenizer never imports our model code.
"""

from __future__ import annotations

import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A ``.gguf`` file carries its tokenizer and chat template; a directory has HF files."""
    if path.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                             gguf_file=os.path.basename(path))
    return AutoTokenizer.from_pretrained(path)
