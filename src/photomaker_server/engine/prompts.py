"""Turning a prompt with a trigger word into token ids for PhotoMaker's two prompt paths.

The *ID path* drops the trigger token and repeats the class word once per ID photo
(``a man img, …`` → ``a man man man, …``), remembering where those copies are; the ID embeddings are later fused
in at exactly those positions. The *text-only path* is the prompt without the trigger word, encoded the plain SDXL
way; it drives the first ``start_merge_step`` steps so the layout forms before the identity is imposed.

The token handling follows the reference implementation on purpose (including its truncation of the expanded
sequence without re-adding the end token): the same ids give the same embeddings, and users compare images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from .errors import InvalidRequest


@dataclass
class IDPromptTokens:
    #: One row of ``model_max_length`` ids per tokenizer.
    input_ids: list[list[int]]
    #: True at the positions of the repeated class word (from the last tokenizer, as the reference does).
    class_tokens_mask: torch.Tensor
    class_word: str


def add_trigger_word(tokenizer: PreTrainedTokenizerBase, trigger_word: str) -> int:
    """Register the trigger word as one special token (so it is never split) and return its id."""
    tokenizer.add_tokens([trigger_word], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(trigger_word)


def _trigger_rule(trigger_word: str) -> str:
    return f"put the class word right before '{trigger_word}', e.g. 'a photo of a man {trigger_word}'"


def tokenize_id_prompt(
    tokenizers: list[PreTrainedTokenizerBase], prompt: str, trigger_word: str, num_id_tokens: int
) -> IDPromptTokens:
    rows: list[list[int]] = []
    mask: list[bool] = []
    class_word = ""
    for tokenizer in tokenizers:
        trigger_id = tokenizer.convert_tokens_to_ids(trigger_word)
        ids = tokenizer.encode(prompt)  # with start/end tokens, not truncated yet
        clean: list[int] = []
        class_positions: list[int] = []
        for token_id in ids:
            if token_id == trigger_id:
                class_positions.append(len(clean) - 1)
            else:
                clean.append(token_id)
        if len(class_positions) != 1:
            raise InvalidRequest(
                f"the prompt must contain the trigger word '{trigger_word}' exactly once "
                f"(found {len(class_positions)}); {_trigger_rule(trigger_word)}",
                field="prompt",
            )
        position = class_positions[0]
        if position < 1:
            raise InvalidRequest(f"no class word before the trigger word; {_trigger_rule(trigger_word)}", field="prompt")
        max_len = tokenizer.model_max_length
        if position + num_id_tokens > max_len:
            raise InvalidRequest(
                f"the prompt is too long for {num_id_tokens} ID photos: the class word sits at token {position} and "
                f"its {num_id_tokens} copies must fit in {max_len} tokens; shorten the text before the class word "
                "or send fewer photos",
                field="prompt",
            )
        class_token = clean[position]
        class_word = tokenizer.decode([class_token]).strip()
        expanded = clean[:position] + [class_token] * num_id_tokens + clean[position + 1 :]
        expanded = expanded[:max_len] + [tokenizer.pad_token_id] * max(0, max_len - len(expanded))
        rows.append(expanded)
        mask = [position <= i < position + num_id_tokens for i in range(max_len)]
    return IDPromptTokens(rows, torch.tensor([mask], dtype=torch.bool), class_word)


def text_only_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, trigger_word: str) -> str:
    """The prompt without its trigger word, as the reference builds it (encode, drop the trigger id, decode)."""
    trigger_id = tokenizer.convert_tokens_to_ids(trigger_word)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    return tokenizer.decode([i for i in ids if i != trigger_id])


def tokenize_plain(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """SDXL's own prompt tokenization: pad and truncate to the model length (end token kept)."""
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
