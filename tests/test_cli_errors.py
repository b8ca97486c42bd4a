"""cli_errors: user errors become one line and an exit code; anything else stays a bug."""
import pytest
from absl import app

from mathft_jax.core import cli_errors


def _raising(error):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize("error, code", [
    (cli_errors.UsageError("--k=0: K must be positive"), 2),
    (cli_errors.DataError("c.jsonl:3: not JSON\n(second line)"), 1),
    (app.UsageError("--candidates=FILE is required"), 2),  # absl's, as older mains raise it
    (FileNotFoundError("/data/math/test.jsonl: no such file"), 1),  # a path the user gave
])
def test_user_errors_print_one_line_and_exit_with_their_code(capsys, error, code):
    with pytest.raises(SystemExit) as exited:
        cli_errors.wrap(_raising(error), prog="tool")(["tool"])
    assert exited.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tool: error: ")
    assert err.strip() == "tool: error: " + cli_errors.one_line(error)
    assert "Traceback" not in err


def test_other_exceptions_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        cli_errors.wrap(_raising(ZeroDivisionError("bug")))(["tool"])


def test_main_result_passes_through():
    assert cli_errors.wrap(lambda argv: len(argv))(["tool", "x"]) == 2


def test_user_errors_are_value_errors():  # existing `except ValueError` callers still work
    assert issubclass(cli_errors.UsageError, ValueError) and issubclass(cli_errors.DataError, ValueError)


def test_one_line_folds_line_breaks():
    assert cli_errors.one_line("a\nb\n") == "a b"


def test_errors_raised_inside_a_gin_configurable_keep_their_code_and_message(capsys):
    import gin

    @gin.configurable("cli_errors_test_fn")
    def configured(batch_size=0):
        raise cli_errors.UsageError(f"train.batch_size={batch_size}: must be >= 1")

    with pytest.raises(SystemExit) as exited:
        cli_errors.wrap(lambda argv: configured(), prog="train")(["train"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "train: error: train.batch_size=0: must be >= 1\n"


def test_the_errors_of_data_readers_converters_and_a_preempted_pipeline(capsys):
    from mathft_jax.convert.errors import ConversionError
    from mathft_jax.data.readers import DataFormatError
    from mathft_jax.pipeline import Preempted
    for error, code in ((DataFormatError("t.jsonl:3: malformed JSON line"), 1),
                        (ConversionError("hf/config.json: missing"), 1),
                        (Preempted("stage scr preempted at step 8; rerun to resume"), 75)):
        assert isinstance(error, ValueError)
        with pytest.raises(SystemExit) as exited:
            cli_errors.wrap(_raising(error), prog="tool")(["tool"])
        assert exited.value.code == code
        assert capsys.readouterr().err == f"tool: error: {error}\n"


def test_guard_gives_argparse_tools_the_same_exits(capsys):
    def missing():
        raise FileNotFoundError("ckpt/nope: not found")
    with pytest.raises(SystemExit) as exited:
        cli_errors.guard(missing, "export_hf")
    assert exited.value.code == 1
    assert capsys.readouterr().err == "export_hf: error: ckpt/nope: not found\n"
    with pytest.raises(SystemExit):
        cli_errors.guard(missing, "export_hf", debug=True)
    assert "Traceback" in capsys.readouterr().err
    assert cli_errors.guard(lambda: 3, "export_hf") == 3
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli_errors.guard(lambda: 1 / 0, "export_hf")
