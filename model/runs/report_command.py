"""``build.py report``: accuracy against average weight bits over run directories (Fig. 3 / 8, Table 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from model.cli import DEFAULT_OUT, bounded, path_text

HELP = "accuracy vs average weight bits over run directories (Fig. 3 / 8 plot, Table 1 markdown)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", type=path_text, metavar="RUN_DIR", help="run directories made by `train`")
    p.add_argument("--budgets", type=bounded(float, 1e-6, 32.0), nargs="+", default=[8.0, 4.0, 2.0],
                   help="Table 1 budgets q: best ticket with at most q average bits (default: 8 4 2)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "report"), help="output directory (default: out/report)")


def run(args) -> int:
    """Fig. 3 / Fig. 8 plot and Table-1 markdown over run directories (model/runs/report.py)."""
    from model.runs.report import write_report

    _rows, markdown, paths = write_report(args.run_dirs, Path(args.out), tuple(args.budgets))
    print(markdown)
    print(f"wrote {paths['png']}, {paths['md']}, {paths['json']}")
    return 0
