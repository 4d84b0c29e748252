"""``build.main`` in the test's process, for the tests of the command line that need no process of their own (an
interpreter and torch cost about 2 s a process): the exit status (argparse's too) and what it wrote to stdout and
stderr. What a process adds (the exit status the shell sees, what reaches its stderr) is checked by the tests that
run ``build.py`` as one (``tests/test_cli.py`` ``cli``).

An exception ``build.main`` does not turn into its one-line message propagates from here and fails the test: in the
test's process that is the check that a user mistake prints no traceback (so these tests do not look for
"Traceback" in stderr, which in this process never holds one)."""

import build


def main(capsys, *argv) -> tuple[int, str, str]:
    """``build.main(argv)`` (each argument as a string): its exit status, stdout and stderr."""
    try:
        code = build.main([str(a) for a in argv])
    except SystemExit as exc:  # (argparse's errors: exit status 2 after its message)
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err
