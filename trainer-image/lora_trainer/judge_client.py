"""The LLM judge's HTTP client: one OpenAI-compatible chat completions request per prompt
(temperature 0, so a re-run asks the same), and the JSON object read out of the reply.
What to ask and how the reply becomes scores is the grader's business (grader.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from lora_trainer.errors import StepError

JUDGE_TIMEOUT_SECONDS = 60


class JudgeClient:
    """Asks ``model`` at ``endpoint``/chat/completions, with a Bearer ``api_key`` when there is one."""

    def __init__(self, endpoint: str, model: str, api_key: str | None, timeout: float = JUDGE_TIMEOUT_SECONDS):
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout

    def ask(self, prompt: str) -> str:
        """The reply's text; every failure (HTTP, network, malformed reply) is a StepError naming the judge."""
        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode(errors="replace")
            raise StepError(f"LLM judge {self.url} answered HTTP {err.code}: {detail}") from err
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise StepError(f"LLM judge {self.url} unreachable or timed out after {self.timeout:.0f}s: "
                            f"{getattr(err, 'reason', err)}") from err
        except json.JSONDecodeError as err:
            raise StepError(f"LLM judge {self.url} did not answer JSON: {err}") from err
        try:
            return reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise StepError(f"LLM judge reply has no choices[0].message.content: {str(reply)[:300]}") from err


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (a reply may wrap it in prose or add a second one)."""
    decoder = json.JSONDecoder()
    for start in (i for i, c in enumerate(text) if c == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
