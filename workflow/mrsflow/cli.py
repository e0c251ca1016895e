"""Command-line entry points called by the Snakemake rules (one subcommand per step).

Each subcommand parses paths and JSON-encoded config blocks, imports only the stage module it
needs (so a job pays for its own imports only) and calls one function of that module.
Errors that concern the user's data are raised as :class:`mrsflow.errors.InputError` and
printed as one clear line naming the file; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mrsflow.errors import InputError


def _json(text: str):
    return json.loads(text)


def _basis(a: argparse.Namespace) -> None:
    from mrsflow import basis

    basis.run_basis({**a.sequence, **a.basis}, Path(a.outdir), Path(a.png))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mrsflow", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("basis", help="simulate the basis set (FSL-MRS JSON) and its PNG")
    p.add_argument("--sequence", type=_json, required=True, help="config 'sequence' as JSON")
    p.add_argument("--basis", type=_json, required=True, help="config 'basis' as JSON")
    p.add_argument("--outdir", required=True)
    p.add_argument("--png", required=True)
    p.set_defaults(func=_basis)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as err:
        print(f"mrsflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
