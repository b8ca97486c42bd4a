"""math-verify helper process: answers `{"a": gold, "b": text, "cpu": s}` lines
(`helper_protocol`).

Run as a script by `timeout.HelperPool` (the `math_verify` grader), so that math-verify's
SIGALRM-based timeouts run in a main thread, and a hung comparison can be killed. The gold and
the text are parsed with math-verify's own default extraction; nothing here is our code's.
"""
from helper_protocol import serve  # this script's directory: no package import
from math_verify import parse, verify


def main() -> None:
    print("ready", flush=True)
    serve(lambda gold, text: verify(parse(gold), parse(text)))


if __name__ == "__main__":
    main()
