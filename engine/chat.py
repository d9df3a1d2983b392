"""Prompts as token ids: plain completion, or the model's own chat template from GGUF metadata."""

from __future__ import annotations

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ModelLoadError


def _raise(message: str):
    raise TemplateError(message)


def render_chat(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    """Render a HF-style chat template. Sandboxed: the template comes from a model file."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template).render(
            messages=messages, bos_token=bos_token, eos_token=eos_token,
            add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        raise ModelLoadError(f"tokenizer.chat_template: cannot render ({exc})") from None


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids for a user prompt; with chat=True, wrapped in the model's chat template."""
    if not chat:
        return tokenizer.encode(text, add_special=True, parse_special=False)
    if not tokenizer.chat_template:
        raise ModelLoadError("--chat: the model has no tokenizer.chat_template in its metadata")
    bos = tokenizer.piece(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    eos = tokenizer.piece(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
    rendered = render_chat(tokenizer.chat_template, [{"role": "user", "content": text}], bos, eos)
    # Templates that write the BOS text themselves must not get a second BOS id.
    add_bos = not (bos and rendered.startswith(bos))
    return tokenizer.encode(rendered, add_special=add_bos, parse_special=True)
