"""Chat tokenizers for tests, built with `tokenizers` (no downloads): a byte-level BPE (every
byte a token) with the chat tokens added, and a chat template in tokenizer_config.json."""
import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

# Qwen2.5-Instruct's ChatML template (its tool branch left out): a default system turn when
# the conversation has none.
CHATML = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nPlease reason step by step, and put your final answer "
    "within \\\\boxed{}.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) "
    "or (message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")
# Meta-Llama-3-8B-Instruct's template: the BOS is written by the template.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
    "<|end_header_id|>\n\n' }}{% endif %}")
# What else transformers' environment gives a template: tools and documents (None), blocks that
# trim_blocks and lstrip_blocks tidy, tojson (no HTML escaping), loop controls, strftime_now,
# a generation block and raise_exception.
FEATURES = (
    "{% if tools is none and documents is none %}[no tools, no documents]{% endif %}\n"
    "{% for message in messages %}\n"
    "  {% if message.role == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}\n"
    "  {% if message.role == 'system' %}\n"
    "    {% continue %}\n"
    "  {% endif %}\n"
    "<turn {{ message.role }}>{{ message | tojson }}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}\n"
    "<turn assistant year={{ strftime_now('%Y') }}>{% generation %}{{ eos_token }}{% endgeneration %}\n"
    "{% endif %}\n")
QWEN_SYSTEM = r"Please reason step by step, and put your final answer within \boxed{}."
CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
               "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def write_tokenizer(path, template, **special):
    """A byte-level BPE tokenizer (every byte a token, the chat tokens added) with `template`
    and the special tokens in its tokenizer_config.json."""
    path.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(CHAT_TOKENS)
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
    if template is not None:
        config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


