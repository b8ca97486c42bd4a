r"""Prompt formats: how a problem becomes the text a model continues, chosen per run.

    plain         the paper's template, `formats.generation_prompt` ("Problem:\n{problem}\n\n
                  Solution:\n"); the default, and what every run before formats wrote
    minerva_math  Minerva's 4-shot MATH prompt (Lewkowycz et al., 2022, Appendix D.2)
    gsm8k_cot     the 8-shot chain-of-thought prompt of Wei et al. (2022) for GSM8K
    chat          the model's own chat template (tokenizer_config.json's `chat_template` or
                  chat_template.jinja), one user turn holding the problem, after a system turn
                  where `system` is given; rendered as transformers' apply_chat_template(...,
                  add_generation_prompt=True) renders it (`chat_template.py`)

The few-shot exemplars are data: `fewshot/<name>.json`, each with its source.

A caller renders a prompt so:

    fmt = prompts.prompt_format("chat", tokenizer_dir="CKPT/tokenizer",
                                system=r"Please reason step by step, and put your final "
                                       r"answer within \boxed{}.")
    fmt.render(problem)        # the prompt text, exactly as the template gives it
    fmt.prompt_text(problem)   # what follows the decoder's start token (render() without a
                               # leading BOS text: every sequence here starts with the BOS)
    fmt.tokens(problem, vocab, start_id)   # [start_id] + vocab.encode(prompt_text)
    fmt.target(solution)       # a reference solution as the training target: the
                               # assistant's turn up to and including its end-of-turn
                               # token (chat), where the task's EOS is not that token
    fmt.continuation(text)     # a sampled text as a training target (pairs, DPO)
    fmt.stop_strings           # where a sample ends beside EOS ("<|im_end|>", "\n\nProblem:")
    fmt.record                 # what a candidates record carries of it ({} for plain)

A run chooses its format in gin, `prompt_format.name` / `.system` / `.tokenizer_dir`
(`PromptConfig`; per stage: `sample_eval/prompt_format.name = 'chat'`): `infer` samples
with it (`InferConfig.prompt`) and writes `prompt_format` and `system_prompt` into every
record of a non-plain run. The training stages render with the gin-bound format
(`gin_format`): SSFT's examples (and GRPO's supervised term), GRPO's rollout prompts, a
preference file's `problem`s. What is built from sampled candidates (the sequence and DPO
pairs, the likelihood scorer) uses the format each record names (`sampled_format`).
tokenizer_dir defaults to the directory of the run's HF tokenizer.json.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable, Optional, Sequence

import gin
from etils import epath

from mathft_jax.core.settings import SettingError
from mathft_jax.data import chat_template, formats

FEWSHOT_DIR = os.path.join(os.path.dirname(__file__), "fewshot")
FEWSHOT_NAMES = ("minerva_math", "gsm8k_cot")
PLAIN, CHAT = "plain", "chat"
FORMAT_NAMES = (PLAIN, *FEWSHOT_NAMES, CHAT)
SPECIAL_IDS = "special_ids.json"  # a model_dir's tokenizer/ (convert/model_files.py)
_PROBE = "\x00mathft-solution\x00"  # stands for the answer when a chat turn is measured


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """One run's prompt format (build with `prompt_format`)."""

    name: str
    system: Optional[str]
    stop_strings: tuple
    _render: Callable[[str], str]
    _target: Callable[[str], str]
    _bos_text: Optional[str] = None  # a BOS the template writes itself
    _ending: str = ""  # what closes a chat turn before the task's EOS

    def render(self, problem: str) -> str:
        return self._render(problem)

    def prompt_text(self, problem: str) -> str:
        """The prompt after the decoder's start token: a leading BOS text is that token."""
        text = self._render(problem)
        if self._bos_text and text.startswith(self._bos_text):
            return text[len(self._bos_text):]
        return text

    def tokens(self, problem: str, vocab, start_id: int) -> list[int]:
        return [start_id] + list(vocab.encode(self.prompt_text(problem)))

    def target(self, solution: str) -> str:
        """A reference solution as the training target (text; the task appends EOS)."""
        return self._target(solution)

    def continuation(self, text: str) -> str:
        """A sampled text as a training target (sequence pairs, DPO): as sampled, with the
        end of turn the sampler stopped on where the task's EOS is not it (chat)."""
        return text + self._ending

    @property
    def record(self) -> dict:
        """The fields a candidates record keeps: none for plain (files as before formats),
        else `prompt_format` and, where set, `system_prompt`."""
        if self.name == PLAIN:
            return {}
        return {"prompt_format": self.name,
                **({"system_prompt": self.system} if self.system is not None else {})}


def recorded_format(record: dict) -> tuple[str, Optional[str]]:
    """(format name, system prompt) a candidates record was sampled with."""
    return record.get("prompt_format", PLAIN), record.get("system_prompt")


def sampled_format(record: dict, vocabulary=None) -> PromptFormat:
    """The format a candidates record was sampled with (`recorded_format`), chat's template
    read beside `vocabulary`'s tokenizer.json: a scorer reads each record in its own."""
    name, system = recorded_format(record)
    return _with_files(PromptConfig(name=name, system=system), vocabulary)


def prompt_format(name: str = PLAIN, *, tokenizer_dir=None, system: Optional[str] = None,
                  eos_token: Optional[str] = None) -> PromptFormat:
    """The format `name` (FORMAT_NAMES). chat reads `tokenizer_dir`'s chat template; its
    training targets end with the template's end-of-turn token unless that is the EOS the
    task appends (`eos_token`; default: the model's EOS, special_ids.json's `eos_id` in a
    model_dir's tokenizer/, else the tokenizer's `eos_token`)."""
    PromptConfig(name=name, system=system).validate()
    if name == PLAIN:
        return PromptFormat(PLAIN, None, (), formats.generation_prompt, formats.generation_target)
    if name in FEWSHOT_NAMES:
        return _fewshot_format(name)
    return _chat_format(tokenizer_dir, system, eos_token)


# ----------------------------------------------------------------------------- few-shot

# The few-shot prompt each benchmark is reported with: GSM8K's own 8-shot chain of thought,
# Minerva's MATH prompt for the competition-math sets (lm-evaluation-harness's gsm8k_cot and
# minerva_math tasks).
FEWSHOT_FOR_TASK = {"gsm8k": "gsm8k_cot"}


def fewshot_for(task: str) -> str:
    """The few-shot format name for a problem source (`data/sources.py`)."""
    return FEWSHOT_FOR_TASK.get(task, "minerva_math")



@functools.lru_cache(maxsize=None)
def fewshot_prompt(name: str) -> dict:
    """fewshot/<name>.json: `exemplars` [{problem, solution}], the `exemplar` and `query`
    layouts, the `separator` between them, the `target_prefix` a solution follows the
    query with, `stop_strings` and the `source`."""
    with open(os.path.join(FEWSHOT_DIR, f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


def _fewshot_format(name: str) -> PromptFormat:
    spec = fewshot_prompt(name)
    shots = spec["separator"].join(spec["exemplar"].format(**shot) for shot in spec["exemplars"])

    def render(problem: str) -> str:
        return shots + spec["separator"] + spec["query"].format(problem=problem)

    def target(solution: str) -> str:
        return spec["target_prefix"] + formats.generation_target(solution)

    return PromptFormat(name, None, tuple(spec["stop_strings"]), render, target)


# ----------------------------------------------------------------------------- chat


def _chat_format(tokenizer_dir, system: Optional[str], eos_token: Optional[str]) -> PromptFormat:
    if tokenizer_dir is None:
        raise SettingError("prompt_format.name='chat' needs the model's tokenizer files: the "
                           "run's vocabulary is not a HuggingFace tokenizer.json; bind "
                           "prompt_format.tokenizer_dir")
    template = chat_template.read_chat_template(tokenizer_dir)
    if template is None:
        raise SettingError(f"prompt_format.name='chat': {tokenizer_dir} has no chat template "
                           f"({chat_template.TOKENIZER_CONFIG}'s chat_template or "
                           f"{chat_template.CHAT_TEMPLATE_FILE}); choose another format")
    head = [{"role": "system", "content": system}] if system is not None else []

    def messages(problem: str) -> list[dict]:
        return head + [{"role": "user", "content": problem}]

    def render(problem: str) -> str:
        return template.render(messages(problem), add_generation_prompt=True)

    turn = _assistant_turn(template, messages("x"), render("x"))
    opening, closing = turn or ("", "")
    end_of_turn = closing.rstrip() or None
    eos_token = eos_token or _model_eos(tokenizer_dir) or template.special_tokens.get("eos_token")
    # The task appends EOS: where it is the end-of-turn token, the text must not repeat it.
    ending = end_of_turn if end_of_turn and end_of_turn != eos_token else ""

    def target(solution: str) -> str:
        if turn is None:  # sampling with such a template works; training on it cannot
            raise SettingError(f"prompt_format.name='chat': the chat template of "
                               f"{template.source} writes an assistant turn that does not "
                               "continue its generation prompt, so it gives no training targets")
        return opening + formats.generation_target(solution) + ending

    return PromptFormat(CHAT, system, (end_of_turn,) if end_of_turn else (), render, target,
                        template.special_tokens.get("bos_token"), ending)


def _assistant_turn(template: chat_template.ChatTemplate, messages: Sequence[dict],
                    prompt: str) -> Optional[tuple[str, str]]:
    """(what the template writes between the generation prompt and the answer, what it
    writes after the answer): the conversation rendered with an assistant turn, less the
    prompt rendered for generation. None where the one does not continue the other."""
    full = template.render(list(messages) + [{"role": "assistant", "content": _PROBE}],
                           add_generation_prompt=False)
    if not full.startswith(prompt) or _PROBE not in full[len(prompt):]:
        return None
    opening, closing = full[len(prompt):].split(_PROBE, 1)
    return opening, closing


def _model_eos(tokenizer_dir) -> Optional[str]:
    """The text of the model's EOS where a model_dir's special_ids.json names it."""
    ids_file = epath.Path(tokenizer_dir) / SPECIAL_IDS
    if not ids_file.exists():
        return None
    eos_id = json.loads(ids_file.read_text()).get("eos_id")
    return None if eos_id is None else chat_template.token_text(tokenizer_dir, int(eos_id))


# ----------------------------------------------------------------------------- gin


@gin.configurable("prompt_format")
@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """The run's prompt format, bound in gin as `prompt_format.<field>` (per stage:
    `sample_eval/prompt_format.name`). name: one of FORMAT_NAMES; system: chat's system
    prompt (None: no system turn, so the template's own default, if it has one);
    tokenizer_dir: where chat's template is read (None: the run's HF tokenizer.json's
    directory)."""

    name: str = PLAIN
    system: Optional[str] = None
    tokenizer_dir: Optional[str] = None

    def validate(self) -> "PromptConfig":
        """The name and system prompt, checked without reading any file."""
        if self.name not in FORMAT_NAMES:
            raise SettingError(f"prompt_format.name={self.name!r}: expected one of "
                               f"{', '.join(FORMAT_NAMES)}")
        if self.system is not None and self.name != CHAT:
            raise SettingError(f"prompt_format.system is set, but prompt_format.name="
                               f"{self.name!r} has no system turn (only 'chat' does)")
        return self

    def build(self, vocabulary=None) -> PromptFormat:
        """The format, with chat's template read from `tokenizer_dir`, else from the files
        beside `vocabulary`'s tokenizer.json."""
        self.validate()
        return _built(self.name, self.system, self.tokenizer_dir or vocabulary_dir(vocabulary))


def vocabulary_dir(vocabulary) -> Optional[str]:
    """The directory of an HF vocabulary's tokenizer.json (None for byte/SentencePiece)."""
    path = getattr(vocabulary, "path", None)
    return str(epath.Path(path).parent) if isinstance(path, str) else None


@functools.lru_cache(maxsize=8)
def _built(name: str, system: Optional[str], tokenizer_dir: Optional[str]) -> PromptFormat:
    return prompt_format(name, tokenizer_dir=tokenizer_dir, system=system)


def gin_format(vocabulary=None) -> PromptFormat:
    """The format gin binds in the current scope (`PromptConfig()`); plain needs no
    vocabulary, chat reads the gin-bound one's files when none is given."""
    return _with_files(PromptConfig(), vocabulary)


def _with_files(config: PromptConfig, vocabulary) -> PromptFormat:
    """`config` built; chat without a tokenizer_dir or vocabulary reads gin's vocabulary's."""
    if config.name == CHAT and vocabulary is None and config.tokenizer_dir is None:
        from mathft_jax.data import vocab as vocab_lib  # noqa: PLC0415 (TF; for chat alone)
        vocabulary = vocab_lib.get_vocabulary()
    return config.build(vocabulary)
