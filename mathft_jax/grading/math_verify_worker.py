"""math-verify helper process: reads `{"a": gold, "b": text}` lines, answers "1", "0" or "e".

Run as a script by `timeout.HelperPool` (the `math_verify` grader), so that math-verify's
SIGALRM-based timeouts run in a main thread, and a hung comparison can be killed. The gold and
the text are parsed with math-verify's own default extraction; nothing here is our code's.
"""
import json
import sys

from math_verify import parse, verify


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            answer = "1" if verify(parse(request["a"]), parse(request["b"])) else "0"
        except Exception:  # noqa: BLE001 - any failure is "cannot decide"
            answer = "e"
        print(answer, flush=True)


if __name__ == "__main__":
    main()
