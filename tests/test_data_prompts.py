r"""Prompt formats (data/prompts.py): the chat template rendered as transformers' apply_chat_template
renders it, byte for byte and token for token; the few-shot prompts; chat training targets; the
errors. The tokenizers: tests/chat_tokenizers.py (built with `tokenizers`, no downloads)."""
import json

import gin
import pytest
from tokenizers import Tokenizer

from chat_tokenizers import CHATML, FEATURES, LLAMA3, QWEN_SYSTEM, write_tokenizer
from mathft_jax.core.settings import SettingError
from mathft_jax.data import chat_template, prompts

PROBLEM = "If $x + 2 = 5$, what is $x$? (Answer <in> 'quotes' & \"more\".)"


TOKENIZERS = {  # name: (template, special tokens)
    "chatml": (CHATML, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "chatml_base_eos": (CHATML, {"eos_token": "<|endoftext|>"}),
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "llama3_base_eos": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}),
    "features": (FEATURES, {"eos_token": "<|im_end|>"}),
}


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {name: write_tokenizer(root / name, template, **special)
            for name, (template, special) in TOKENIZERS.items()}


def hf_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast.from_pretrained(str(path))


def hf_messages(system):
    head = [{"role": "system", "content": system}] if system is not None else []
    return head + [{"role": "user", "content": PROBLEM}]


@pytest.mark.parametrize("name", ["chatml", "llama3", "features"])
@pytest.mark.parametrize("system", [None, QWEN_SYSTEM])
def test_chat_rendering_is_transformers_byte_for_byte_and_token_for_token(tokenizer_dirs, name,
                                                                          system):
    from mathft_jax.data.vocab import HfTokenizerVocabulary, decoder_start_id

    path = tokenizer_dirs[name]
    hf = hf_tokenizer(path)
    expected = hf.apply_chat_template(hf_messages(system), tokenize=False,
                                      add_generation_prompt=True)
    fmt = prompts.prompt_format("chat", tokenizer_dir=str(path), system=system)
    assert fmt.render(PROBLEM) == expected
    vocab = HfTokenizerVocabulary(str(path / "tokenizer.json"),
                                  eos_token=TOKENIZERS[name][1]["eos_token"],
                                  bos_token=TOKENIZERS[name][1].get("bos_token"))
    start = decoder_start_id(vocab)
    ids = fmt.tokens(PROBLEM, vocab, start)
    expected_ids = list(hf.apply_chat_template(hf_messages(system), tokenize=True,
                                               add_generation_prompt=True, return_dict=False))
    if name == "llama3":  # the template writes the BOS, which is the decoder's start token
        assert ids == expected_ids and ids[0] == vocab.bos_id and ids.count(vocab.bos_id) == 1
    else:  # no BOS in the template: the start token (0: no BOS) comes first
        assert ids == [start] + expected_ids


def test_the_template_is_read_where_transformers_reads_it(tokenizer_dirs, tmp_path):
    # chat_template.jinja (transformers >= 4.50 saves it) wins over tokenizer_config.json's,
    # and a list of named templates gives "default"
    path = write_tokenizer(tmp_path / "named", [{"name": "tool_use", "template": "tools"},
                                                {"name": "default", "template": LLAMA3}],
                           bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    llama = prompts.prompt_format("chat", tokenizer_dir=str(tokenizer_dirs["llama3"]))
    assert prompts.prompt_format("chat", tokenizer_dir=str(path)).render(PROBLEM) == \
        llama.render(PROBLEM)
    (path / "chat_template.jinja").write_text(CHATML)
    hf = hf_tokenizer(path)
    assert chat_template.read_chat_template(path).render(hf_messages(None), True) == \
        hf.apply_chat_template(hf_messages(None), tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("decoder, bos", [(None, "<|begin_of_text|>"), ({}, "<|endoftext|>")])
def test_special_tokens_map_fills_in_as_transformers_reads_it(tmp_path, decoder, bos):
    # special_tokens_map.json's tokens override the config's where the config has no
    # added_tokens_decoder (a tokenizer saved before transformers 4.34)
    extra = {} if decoder is None else {"added_tokens_decoder": decoder}
    path = write_tokenizer(tmp_path / "legacy", LLAMA3, bos_token="<|endoftext|>",
                           eos_token="<|eot_id|>", **extra)
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": {"content": "<|begin_of_text|>", "lstrip": False}}))
    hf = hf_tokenizer(path)
    rendered = chat_template.read_chat_template(path).render(hf_messages(None), True)
    assert rendered.startswith(bos)
    assert rendered == hf.apply_chat_template(hf_messages(None), tokenize=False,
                                              add_generation_prompt=True)


def test_raise_exception_in_a_template_raises(tokenizer_dirs):
    import jinja2

    template = chat_template.read_chat_template(tokenizer_dirs["features"])
    with pytest.raises(jinja2.exceptions.TemplateError, match="no tools here"):
        template.render([{"role": "tool", "content": "x"}], True)


@pytest.mark.parametrize("name, end_of_turn, closes_with_eos", [
    ("chatml", "<|im_end|>", True), ("chatml_base_eos", "<|im_end|>", False),
    ("llama3", "<|eot_id|>", True), ("llama3_base_eos", "<|eot_id|>", False)])
def test_a_chat_training_row_is_the_templates_conversation_ending_at_its_end_of_turn(
        tokenizer_dirs, name, end_of_turn, closes_with_eos):
    """prompt + target + the task's EOS is the template's rendering of the conversation with
    the solution as the assistant's turn, up to its end-of-turn token, which comes once."""
    from mathft_jax.data.vocab import HfTokenizerVocabulary

    path = tokenizer_dirs[name]
    special = TOKENIZERS[name][1]
    fmt = prompts.prompt_format("chat", tokenizer_dir=str(path), system=QWEN_SYSTEM)
    assert fmt.stop_strings == (end_of_turn,)
    solution = "x = 3, so $\\boxed{3}$.  \n"
    hf = hf_tokenizer(path)
    conversation = hf.apply_chat_template(
        hf_messages(QWEN_SYSTEM) + [{"role": "assistant", "content": solution.rstrip()}],
        tokenize=False)
    eos = special["eos_token"]
    row = fmt.render(PROBLEM) + fmt.target(solution) + eos
    assert conversation.startswith(row) if closes_with_eos else \
        conversation.startswith(row[:-len(eos)])
    assert fmt.target(solution).endswith(end_of_turn) != closes_with_eos
    vocab = HfTokenizerVocabulary(str(path / "tokenizer.json"), eos_token=eos)
    row_ids = list(vocab.encode(fmt.target(solution))) + [vocab.eos_id]
    end_id = vocab.tokenizer.token_to_id(end_of_turn)
    assert end_id in row_ids[-2:] and row_ids.count(end_id) == 1
    assert fmt.continuation("sampled") == "sampled" + ("" if closes_with_eos else end_of_turn)


def test_the_models_eos_from_special_ids_decides_the_ending(tokenizer_dirs, tmp_path):
    # a model_dir's tokenizer/ names the EOS the model trains with (config.json's, at import):
    # <|im_end|> here, though tokenizer_config.json's eos_token is <|endoftext|>
    path = write_tokenizer(tmp_path / "tokenizer", CHATML, eos_token="<|endoftext|>")
    im_end = Tokenizer.from_file(str(path / "tokenizer.json")).token_to_id("<|im_end|>")
    (path / prompts.SPECIAL_IDS).write_text(json.dumps({"kind": "hf", "eos_id": im_end}))
    assert prompts.prompt_format("chat", tokenizer_dir=str(path)).target("s") == "s"
    assert prompts.prompt_format("chat", tokenizer_dir=str(path),
                                 eos_token="<|endoftext|>").target("s") == "s<|im_end|>"


@pytest.mark.parametrize("name, count, shot, query, stop", [
    ("minerva_math", 4, "Problem:\n{problem}\n\nSolution:\n{solution}",
     "Problem:\n{problem}\n\nSolution:", "\n\nProblem:"),
    ("gsm8k_cot", 8, "Q: {problem}\nA: {solution}", "Q: {problem}\nA:", "\n\nQ:")])
def test_fewshot_prompts_hold_their_exemplars_in_order_and_end_with_the_problem(
        name, count, shot, query, stop):
    spec = prompts.fewshot_prompt(name)
    assert len(spec["exemplars"]) == count and spec["source"]
    fmt = prompts.prompt_format(name)
    text = fmt.render(PROBLEM)
    parts = text.split("\n\n" + query.split("{")[0])
    assert text.endswith(query.format(problem=PROBLEM))
    position = 0
    for exemplar in spec["exemplars"]:
        block = shot.format(**exemplar)
        assert text.index(block, position) == position
        position += len(block) + len("\n\n")
    assert text[position:] == query.format(problem=PROBLEM)
    assert len(parts) == count + 1 and fmt.stop_strings == (stop,)
    assert fmt.prompt_text(PROBLEM) == text
    assert fmt.target(" worked.  \n") == spec["target_prefix"] + " worked."


def test_minerva_exemplars_are_the_published_ones():
    spec = prompts.fewshot_prompt("minerva_math")
    first, last = spec["exemplars"][0], spec["exemplars"][-1]
    assert first["problem"].startswith("Find the domain of the expression  $\\frac{\\sqrt{x-2}}")
    assert last["solution"].endswith(
        "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.")
    assert all(e["solution"].endswith("I hope it is correct.") for e in spec["exemplars"])
    gsm = prompts.fewshot_prompt("gsm8k_cot")["exemplars"]
    assert gsm[0]["solution"].endswith("The answer is 6.") and gsm[-1]["problem"].startswith(
        "Olivia has $23.")


def test_plain_is_the_papers_template_and_records_nothing():
    fmt = prompts.prompt_format()
    assert fmt.name == "plain" and fmt.render("1+1?") == "Problem:\n1+1?\n\nSolution:\n"
    assert fmt.target("Two.  \n") == "Two." and fmt.continuation("Two. ") == "Two. "
    assert fmt.record == {} and fmt.stop_strings == ()
    assert prompts.recorded_format({"problem": "p"}) == ("plain", None)


def test_each_format_is_recorded(tokenizer_dirs):
    assert prompts.prompt_format("gsm8k_cot").record == {"prompt_format": "gsm8k_cot"}
    chat = prompts.prompt_format("chat", tokenizer_dir=str(tokenizer_dirs["chatml"]),
                                 system=QWEN_SYSTEM)
    assert chat.record == {"prompt_format": "chat", "system_prompt": QWEN_SYSTEM}
    assert prompts.recorded_format(chat.record) == ("chat", QWEN_SYSTEM)
    plain_chat = prompts.prompt_format("chat", tokenizer_dir=str(tokenizer_dirs["chatml"]))
    assert plain_chat.record == {"prompt_format": "chat"}


def test_unknown_format_and_missing_template_are_one_line_errors(tmp_path):
    with pytest.raises(SettingError, match=r"^prompt_format.name='bogus': expected one of "
                                           r"plain, minerva_math, gsm8k_cot, chat$"):
        prompts.prompt_format("bogus")
    with pytest.raises(SettingError, match=r"prompt_format.name='bogus'"):
        prompts.PromptConfig(name="bogus").validate()
    path = write_tokenizer(tmp_path / "no_template", None, eos_token="<|endoftext|>")
    with pytest.raises(SettingError, match=r"^prompt_format.name='chat': .*no_template has no "
                                           r"chat template \(tokenizer_config.json's"):
        prompts.prompt_format("chat", tokenizer_dir=str(path))
    with pytest.raises(SettingError, match="needs the model's tokenizer files"):
        prompts.PromptConfig(name="chat").build(vocabulary=None)
    with pytest.raises(SettingError, match=r"prompt_format.system is set, but "
                                           r"prompt_format.name='plain' has no system turn"):
        prompts.prompt_format("plain", system="Be brief.")


def test_the_gin_bound_format_is_the_runs(tokenizer_dirs):
    gin.parse_config(["prompt_format.name = 'chat'",
                      f"prompt_format.tokenizer_dir = '{tokenizer_dirs['chatml']}'",
                      "prompt_format.system = 'Be brief.'",
                      "sample/prompt_format.name = 'gsm8k_cot'",
                      "sample/prompt_format.system = None"])
    assert prompts.gin_format().render("1+1?").startswith("<|im_start|>system\nBe brief.")
    with gin.config_scope("sample"):
        assert prompts.gin_format().name == "gsm8k_cot"
    vocab_dir = prompts.PromptConfig(name="chat", tokenizer_dir=None)
    assert prompts.vocabulary_dir(type("V", (), {"path": "/m/tokenizer/tokenizer.json"})()) == \
        "/m/tokenizer"
    assert vocab_dir.validate() is vocab_dir


def test_a_template_whose_answer_does_not_continue_its_prompt_samples_but_does_not_train(
        tokenizer_dirs):
    fmt = prompts.prompt_format("chat", tokenizer_dir=str(tokenizer_dirs["features"]))
    assert fmt.render("1+1?").endswith("<|im_end|>") and fmt.stop_strings == ()
    with pytest.raises(SettingError, match="does not continue its generation prompt"):
        fmt.target("2")


CHAT_RUN = ["prompt_format.name = 'chat'", "prompt_format.system = 'Be brief.'"]


def test_a_chat_run_fine_tunes_in_its_template(tokenizer_dirs):
    """SSFT's examples (and GRPO's supervised term, which reads the same task) are the chat
    prompt and the solution closed by the end of turn the task's EOS is not."""
    from mathft_jax.data import readers, tasks

    path = tokenizer_dirs["chatml_base_eos"]
    gin.parse_config(CHAT_RUN + [f"prompt_format.tokenizer_dir = '{path}'"])
    problem = readers.Problem("p1", "1+1?", "So $\\boxed{2}$. ", "2")
    [example] = tasks.generation_examples([problem])
    fmt = prompts.prompt_format("chat", tokenizer_dir=str(path), system="Be brief.")
    assert example["inputs"] == fmt.render("1+1?") and \
        example["inputs"].startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert example["targets"] == "So $\\boxed{2}$.<|im_end|>"
    gin.clear_config()
    [plain] = tasks.generation_examples([problem])
    assert plain["inputs"] == "Problem:\n1+1?\n\nSolution:\n" and plain["targets"] == "So $\\boxed{2}$."


def test_rollouts_prompt_in_the_gin_bound_format(tokenizer_dirs):
    from mathft_jax.data.vocab import HfTokenizerVocabulary
    from mathft_jax.rl import rollout

    path = tokenizer_dirs["llama3"]
    vocab = HfTokenizerVocabulary(str(path / "tokenizer.json"), eos_token="<|eot_id|>",
                                  bos_token="<|begin_of_text|>")
    gin.parse_config(CHAT_RUN)  # the tokenizer files are the vocabulary's
    [tokens] = rollout.prompt_tokens([{"problem": PROBLEM}], vocab, vocab.bos_id, limit=10_000)
    hf = hf_tokenizer(path)
    assert tokens == list(hf.apply_chat_template(hf_messages("Be brief."), tokenize=True,
                                                 add_generation_prompt=True, return_dict=False))


def test_pairs_from_chat_samples_keep_the_format_they_were_sampled_in(tokenizer_dirs, tmp_path):
    """Sequence pairs (the scr_sequence_pairwise task's) and DPO pairs of a chat run: the
    record's own prompt, each text closed by the end of turn; plain records are as before."""
    from mathft_jax.data import formats, preferences, tasks

    path = tokenizer_dirs["chatml_base_eos"]
    gin.parse_config([f"prompt_format.tokenizer_dir = '{path}'"])
    chat = {"problem_id": "a", "problem": "1+1?", "gold": "2", "prompt_format": "chat",
            "system_prompt": "Be brief.",
            "samples": [{"text": "so 2", "correct": True}, {"text": "so 3", "correct": False}]}
    plain = {**chat, "problem_id": "b"}
    del plain["prompt_format"], plain["system_prompt"]
    rows, _ = formats.sequence_pair_examples([chat, plain], num_pairs=1,
                                             format_of=prompts.sampled_format)
    fmt = prompts.prompt_format("chat", tokenizer_dir=str(path), system="Be brief.")
    assert [r["inputs"] for r in rows] == [fmt.render("1+1?")] * 2 + \
        ["Problem:\n1+1?\n\nSolution:\n"] * 2
    assert [r["targets"] for r in rows] == ["so 2<|im_end|>", "so 3<|im_end|>", "so 2", "so 3"]
    graded = tmp_path / "graded.jsonl"
    graded.write_text("".join(json.dumps(r) + "\n" for r in (chat, plain)))
    task_rows = tasks._task_loaders(str(graded))["scr_sequence_pairwise"]["train"]()
    assert [(r["inputs"], r["targets"]) for r in task_rows] == \
        [(r["inputs"], r["targets"]) for r in rows]
    pairs = preferences.from_candidates([chat, plain])
    assert pairs[0]["prompt"] == fmt.render("1+1?") and pairs[0]["chosen"] == "so 2<|im_end|>"
    assert "prompt" not in pairs[1] and pairs[1]["chosen"] == "so 2"
    assert preferences.prompt_text(pairs[0]) == fmt.render("1+1?")
    gin.parse_config(["prompt_format.name = 'gsm8k_cot'"])
    assert preferences.prompt_text(pairs[1]).endswith("Q: 1+1?\nA:")


def test_each_benchmark_has_its_fewshot_prompt():
    assert prompts.fewshot_for("gsm8k") == "gsm8k_cot"
    assert {prompts.fewshot_for(t) for t in ("math500", "aime24", "olympiadbench")} == \
        {"minerva_math"}
