"""math-verify helper process: answers `{"a": gold, "b": text, "cpu": s}` lines
(`helper_protocol`).

Run as a script by `timeout.HelperPool` (the `math_verify` grader), so that math-verify's
SIGALRM-based timeouts run in a main thread, and a hung comparison can be killed. The gold and
the text are parsed with math-verify's own default extraction; nothing here is our code's.
"""
from helper_protocol import serve  # this script's directory: no package import
from math_verify import parse, verify


def judge(gold: str, text: str, tolerance: float | None = None) -> bool:
    """math-verify's verdict; where the benchmark grants an absolute `tolerance` (already with
    its slack), also two real numbers, as math-verify reads them, within it."""
    gold_parsed, text_parsed = parse(gold), parse(text)
    if verify(gold_parsed, text_parsed):
        return True
    if tolerance is None or not gold_parsed or not text_parsed:
        return False
    a, b = gold_parsed[0], text_parsed[0]
    numbers = all(getattr(x, "is_number", False) and getattr(x, "is_real", False)
                  for x in (a, b))
    return numbers and abs(float(a) - float(b)) <= tolerance


def main() -> None:
    print("ready", flush=True)
    serve(judge)


if __name__ == "__main__":
    main()
