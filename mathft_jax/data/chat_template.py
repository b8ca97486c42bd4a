"""A tokenizer's own chat template, rendered as `transformers`' `apply_chat_template` renders it.

The template is the tokenizer directory's `chat_template.jinja` (how transformers >= 4.50
saves one), else `tokenizer_config.json`'s `chat_template` (a string, or a list of named
templates of which "default" is used). It is rendered with jinja2 in the environment
transformers builds for chat templates (`transformers.utils.chat_template_utils`): a sandbox
with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension and a `{% generation %}`
block (which renders its body), the `tojson` filter without HTML escaping, and the globals
`raise_exception` and `strftime_now`. The template sees `messages`, `tools` and `documents`
(None), `add_generation_prompt`, and the tokenizer's named special tokens (`bos_token`,
`eos_token`, ...) as strings, from tokenizer_config.json and, where that has no
`added_tokens_decoder`, special_tokens_map.json (as transformers reads them).

No transformers at run time: tests/test_data_prompts.py checks the renderings against it.
Paths may be local or `gs://` (etils epath).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
from typing import Optional, Sequence

from etils import epath

from mathft_jax.core.settings import SettingError

CHAT_TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
TOKENIZER_JSON = "tokenizer.json"
# transformers' SPECIAL_TOKENS_ATTRIBUTES: what `special_tokens_map` passes to a template.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A chat template and the special tokens it is rendered with."""

    source: str  # where the template was read, for messages
    template: str
    special_tokens: dict  # {"bos_token": "<s>", ...}: the named tokens the files give

    def render(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        """`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`."""
        return _compiled(self.template).render(
            messages=[dict(m) for m in messages], tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **self.special_tokens)


def read_chat_template(tokenizer_dir) -> Optional[ChatTemplate]:
    """The directory's chat template; None where its files hold none."""
    tokenizer_dir = epath.Path(tokenizer_dir)
    config = _read_json(tokenizer_dir / TOKENIZER_CONFIG)
    jinja_file = tokenizer_dir / CHAT_TEMPLATE_FILE
    if jinja_file.exists():
        template, source = jinja_file.read_text(), str(jinja_file)
    else:
        template, source = _config_template(config), str(tokenizer_dir / TOKENIZER_CONFIG)
    if not template:
        return None
    return ChatTemplate(source, template, special_tokens(tokenizer_dir, config))


def special_tokens(tokenizer_dir, config: Optional[dict] = None) -> dict:
    """The named special tokens as strings, as transformers loads them: tokenizer_config.json's,
    overridden by special_tokens_map.json's unless the config has an `added_tokens_decoder`."""
    tokenizer_dir = epath.Path(tokenizer_dir)
    config = _read_json(tokenizer_dir / TOKENIZER_CONFIG) if config is None else config
    values = {name: config.get(name) for name in SPECIAL_TOKEN_NAMES}
    if "added_tokens_decoder" not in config:
        token_map = _read_json(tokenizer_dir / SPECIAL_TOKENS_MAP)
        values.update({name: token_map[name] for name in SPECIAL_TOKEN_NAMES if name in token_map})
    return {name: _token_text(value) for name, value in values.items()
            if _token_text(value) is not None}


def token_text(tokenizer_dir, token_id: int) -> Optional[str]:
    """The text of token `token_id` in the directory's tokenizer.json (added tokens first)."""
    tok = _read_json(epath.Path(tokenizer_dir) / TOKENIZER_JSON)
    for added in tok.get("added_tokens", []):
        if added.get("id") == token_id:
            return added.get("content")
    vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        return next((text for text, i in vocab.items() if i == token_id), None)
    return None


def _config_template(config: dict) -> Optional[str]:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _token_text(value) -> Optional[str]:
    if isinstance(value, dict):  # an AddedToken as JSON
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: epath.Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SettingError(f"{path}: not valid JSON ({e})") from None


# ----------------------------------------------------------------------------- the environment


def _raise_exception(message):
    import jinja2  # noqa: PLC0415

    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja2's own tojson escapes HTML characters (<, >, &, '); chat templates expect JSON as is
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
    import jinja2  # noqa: PLC0415 (imported where a chat prompt is rendered)
    import jinja2.ext  # noqa: PLC0415
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (transformers marks the assistant's tokens
        with it for training masks): rendered as its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)
