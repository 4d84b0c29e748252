#!/usr/bin/env python3
"""mpqaccel command line: train -> export -> verilog -> sim -> synth, `eval` for accuracies, `demo` for all of it.

Every subcommand has its own ``--help``. User mistakes (missing or malformed files, out-of-range values)
end with a one-line message naming the file and the field, and exit status 2.

This file is only the entry point: each command lives in a ``*_command.py`` module beside the code it drives
(:data:`COMMANDS`) and brings its own arguments (``add_arguments``) and its ``run(args) -> int``, in the way
of amaranth's ``cli.py`` and Glasgow's applets. Command modules import only torch-free code at import time,
so ``--help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
#: The top-level packages of mpqaccel itself (a missing module among them is a bug, not a missing install).
OWN_PACKAGES = ("build", "driver", "hw", "model", "sim", "tests")

#: Command name -> module holding ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS: dict[str, str] = {
    "demo": "sim.demo_command",
    "train": "model.runs.train_command",
    "eval": "model.export.eval_command",
    "export": "model.export.export_command",
    "verilog": "sim.verilog_command",
    "sim": "sim.sim_command",
    "synth": "hw.platform.synth_command",
    "system": "hw.system.system_command",
    "report": "model.runs.report_command",
    "bench": "sim.bench.bench_command",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="build.py", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return top


#: The variables torchrun sets for every worker (``model.training.distributed.TORCHRUN_ENV``, not imported here: it
#: loads torch) and the smallest value each may have.
TORCHRUN_LOWEST = {"WORLD_SIZE": 1, "RANK": 0, "LOCAL_RANK": 0}


def torchrun_env_error() -> str | None:
    """What is wrong with a torchrun variable that is set but is not an integer in range (``WORLD_SIZE=two``),
    naming it and the values allowed (printed as a user error, not a traceback from ``int()`` later); ``None`` if
    nothing is."""
    for name, low in TORCHRUN_LOWEST.items():
        text = os.environ.get(name)
        if text is None:
            continue
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            return (f"environment variable {name} is {text!r}; allowed an integer >= {low} (torchrun sets WORLD_SIZE, "
                    f"RANK and LOCAL_RANK), or leave it unset to run as one process")
    # Together they must describe one process of a group: a stray RANK would silence a lone run's output, and a
    # group without one of the three is a lone process to the training code (model.training.distributed.launched)
    # but a rank of a group to main's silencing.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for name in ("RANK", "LOCAL_RANK"):
        if name in os.environ and int(os.environ[name]) >= world:
            return (f"environment variable {name} is {os.environ[name]!r} with WORLD_SIZE {world}; allowed 0 .. "
                    f"{world - 1} (start several processes with torchrun, which sets them)")
    missing = [name for name in TORCHRUN_LOWEST if name not in os.environ]
    if world > 1 and missing:
        return f"{_not_set(world, missing)}; torchrun sets WORLD_SIZE, RANK and LOCAL_RANK together"
    return None


def _not_set(world: int, missing: list[str]) -> str:
    return f"WORLD_SIZE is {world} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set"


def rendezvous_error() -> str | None:
    """A group of several processes without torchrun's rendezvous address (torch's env:// init reads MASTER_ADDR and
    MASTER_PORT; without them it raised from deep inside, after the run directory was begun); None if nothing is
    missing or there is no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if world > 1 and missing:
        return (f"{_not_set(world, missing)}; start the processes with torchrun (`torchrun --nproc-per-node N "
                "build.py train ...`), which sets them")
    return None


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))
    from model.errors import ToolError, UserError
    from model.files import check_output_dir
    from model.revision import code_revision

    args = parser().parse_args(argv)
    # Every rank that meets an error prints it (one rank's failure alone must not go unseen), a rank other than 0
    # with its number, so that the same error on every rank reads as that and not as one error printed twice.
    try:
        rank = int(os.environ.get("RANK", "0"))  # ("00" is rank 0)
    except ValueError:
        rank = 0  # (not an integer: torchrun_env_error names it)
    error = f"error (rank {rank})" if rank > 0 else "error"
    problem = torchrun_env_error()
    if problem is not None:
        print(f"{error}: {problem}", file=sys.stderr)
        return 2
    # Under torchrun every rank runs the command (model.training.distributed); only rank 0 (RANK unset or 0)
    # prints results, warnings and progress bars (errors: every rank, above). Read from the environment so that
    # the CLI does not import torch here.
    silent = rank != 0
    if silent and hasattr(args, "quiet"):
        args.quiet = True
    try:
        parallel = args.command == "train" and args.method != "lts"
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not parallel:
            what = f"train --method {args.method}" if args.command == "train" else args.command
            raise UserError(f"`{what}` does not run data-parallel; under torchrun only `train` with --method "
                            f"imq, irq, imp, irp, qnn, qnn-imp or bmpq does: run `{what}` as one process")
        problem = rendezvous_error() if parallel else None
        if problem is not None:
            raise UserError(problem)
        # The folder the command writes to, before any work (model/files.py): --run-dir where given (it
        # replaces --out), else --out.
        # (`is not None`: an empty --out "" is refused there, not taken for the current folder.)
        if getattr(args, "run_dir", None) is not None:
            check_output_dir(args.run_dir, "--run-dir")
        elif getattr(args, "out", None) is not None:
            check_output_dir(args.out, "--out")
        # The code revision every result records, taken before the command's work (model/revision.py): a file
        # edited during a long run does not relabel it.
        code_revision()
        with contextlib.ExitStack() as stack:
            if silent:
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            return args.func(args)
    except UserError as exc:
        print(f"{error}: {exc}", file=sys.stderr)
        return 2
    except ToolError as exc:  # e.g. a simulator that is not installed: its message names the tool and the log
        print(f"{error}: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # a package of pyproject.toml missing: another Python than the .venv's
        if not exc.name or "." in exc.name or exc.name in OWN_PACKAGES:
            raise  # (a submodule, or one of mpqaccel's own: a bug in an import, with its traceback)
        venv = ROOT / ".venv"
        if Path(sys.prefix).resolve() == venv.resolve():
            fix = "the .venv lacks it: run `make setup` (it installs every package pinned in pyproject.toml)"
        else:
            fix = (f"`make setup` installs every pinned package into {venv}: run `{venv / 'bin' / 'python'} build.py "
                   f"{args.command} ...` (or `source {venv / 'bin' / 'activate'}` first)")
        print(f"{error}: the Python package {exc.name!r} is not installed for {sys.executable}; {fix}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or folder the system refuses (a path given by the user, or a full disk)
        if exc.filename is None:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # (writes through model/files.py name their file)
                print(f"{error}: {exc.strerror}: a write found the disk (or the quota) full; free some space and run "
                      "the command again", file=sys.stderr)
                return 2
            raise
        names = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        print(f"{error}: {names}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
