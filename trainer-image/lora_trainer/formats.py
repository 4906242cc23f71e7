"""Step 1b: convert rows of any supported format into one shape, then render and tokenize it.

The one shape is ``Example``: the chat messages before the answer (``prompt``) plus the
answer (``completion``); plain text has no prompt. Rendering applies the tokenizer's chat
template, so training sees exactly what generation sees at inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lora_contract.api import DatasetFormat
from lora_trainer.sources import RawRow

IGNORE_INDEX = -100  # label value the loss ignores (prompt tokens, padding)
_ROLES = ("system", "user", "assistant")


class RowError(ValueError):
    """A row that cannot be converted; the message says why."""


@dataclass
class Example:
    source: str
    location: str
    prompt: list[dict[str, str]]
    completion: str
    prompt_text: str = ""
    completion_text: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)

    @property
    def query(self) -> str:
        """The last user message: what the grader and complexity classes look at."""
        return next((m["content"] for m in reversed(self.prompt) if m["role"] == "user"), "")

    @property
    def text(self) -> str:
        """Prompt and answer contents: what dedupe, length and quality rules look at."""
        return "\n".join([*(m["content"] for m in self.prompt), self.completion])


def _string(row: dict[str, Any], key: str, required: bool = True) -> str:
    value = row.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RowError(f"{key!r} is missing or empty")
        return ""
    if not isinstance(value, str):
        raise RowError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError(f"{key!r} must be a non-empty list of {{role, content}} messages")
    out = []
    for i, message in enumerate(value, 1):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise RowError(f"{key!r} message {i}: role must be one of {', '.join(_ROLES)}")
        out.append({"role": message["role"], "content": _string(message, "content", required=False)})
    return out


def _alpaca(row: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    instruction, extra = _string(row, "instruction"), _string(row, "input", required=False)
    prompt = [{"role": "system", "content": _string(row, "system")}] if row.get("system") else []
    prompt.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction})
    return prompt, _string(row, "output")


def _chat(row: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    messages = _messages(row.get("messages"), "messages")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise RowError("the last message must be a non-empty assistant answer")
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise RowError("no user message before the answer")
    return messages[:-1], messages[-1]["content"]


def _prompt_completion(row: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    prompt_value, completion_value = row.get("prompt"), row.get("completion")
    if isinstance(prompt_value, list):  # conversational prompt/completion
        prompt = _messages(prompt_value, "prompt")
    else:
        prompt = [{"role": "user", "content": _string(row, "prompt")}]
    if isinstance(completion_value, list):
        answer = _messages(completion_value, "completion")
        if len(answer) != 1 or answer[0]["role"] != "assistant":
            raise RowError("a 'completion' message list must hold exactly one assistant message")
        return prompt, _string(answer[0], "content")
    return prompt, _string(row, "completion")


def _text(row: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    return [], _string(row, "text")


_CONVERTERS = {"alpaca": _alpaca, "chat": _chat, "promptCompletion": _prompt_completion, "text": _text}


def detect_format(row: dict[str, Any]) -> DatasetFormat:
    if "messages" in row:
        return "chat"
    if "instruction" in row:
        return "alpaca"
    if "prompt" in row:
        return "promptCompletion"
    if "text" in row:
        return "text"
    raise RowError(f"unknown row format (keys: {', '.join(sorted(row)) or 'none'}); expected "
                   "instruction/output, messages, prompt/completion or text")


def to_example(row: RawRow, declared: DatasetFormat) -> Example:
    """Convert one row; raises ``RowError`` when it does not fit the (declared or detected) format."""
    fmt = detect_format(row.data) if declared == "auto" else declared
    prompt, completion = _CONVERTERS[fmt](row.data)
    return Example(row.source, row.location, prompt, completion)


# ChatML, for tokenizers of base models that ship no chat template.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def render_prompt(tokenizer: Any, prompt: list[dict[str, str]]) -> str:
    """The text a model sees before it answers (chat template with the generation prompt)."""
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def encode(example: Example, tokenizer: Any) -> None:
    """Fill ``example``'s rendered texts and token ids (prompt and answer kept apart for masking)."""
    if not example.prompt:
        example.completion_text = example.completion
        example.completion_ids = [*tokenizer(example.completion)["input_ids"], tokenizer.eos_token_id]
        return
    example.prompt_text = render_prompt(tokenizer, example.prompt)
    full = tokenizer.apply_chat_template(
        [*example.prompt, {"role": "assistant", "content": example.completion}], tokenize=False
    )
    if full.startswith(example.prompt_text):
        example.completion_text = full[len(example.prompt_text):]  # answer plus the template's end of turn
    else:  # templates that rewrite earlier turns: fall back to answer + end of sequence
        example.completion_text = example.completion + tokenizer.eos_token
    example.prompt_ids = tokenizer(example.prompt_text, add_special_tokens=False)["input_ids"]
    example.completion_ids = tokenizer(example.completion_text, add_special_tokens=False)["input_ids"]


def features(example: Example, max_length: int, completion_only: bool) -> dict[str, list[int]] | None:
    """input_ids and labels, truncated to ``max_length``; None when no answer token fits."""
    input_ids = [*example.prompt_ids, *example.completion_ids][:max_length]
    if len(example.prompt_ids) >= max_length:
        return None
    if completion_only:
        labels = [IGNORE_INDEX] * len(example.prompt_ids) + example.completion_ids
    else:
        labels = [*example.prompt_ids, *example.completion_ids]
    return {"input_ids": input_ids, "labels": labels[:max_length]}
