"""The command line every numbered script shares.

    python src/0N_stage.py [--preset NAME|FILE.yaml] [--root DIR] [key=value ...]
                           [--print-config] [--list-keys] [--debug]

A stage is a function ``body(cfg, paths) -> None``. :func:`run_stage` parses the arguments, loads
the config, resolves the root, runs the body, and turns a :class:`UserError` into one line on
stderr and exit code 2 (a traceback only with ``--debug``). Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Callable

from prodesc import config as config_mod
from prodesc.config import Config
from prodesc.errors import run_guarded
from prodesc.paths import RunPaths, resolve_root

Body = Callable[[Config, RunPaths], None]


def log(message: str) -> None:
    """Progress and choices go to stderr with a common prefix; results go to stdout."""
    print(f"[prodesc] {message}", file=sys.stderr, flush=True)


def build_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    first, _, rest = (doc or "").strip().partition("\n")
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.dedent(rest).strip() or None,
        usage=first.strip().removeprefix("!").removeprefix("python ").strip() or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Config: defaults < --preset YAML < key=value overrides, e.g. train.max_steps=20 "
            f"data.template=descfmt. Presets: {', '.join(config_mod.preset_names())}. "
            "See every key with --list-keys."
        ),
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides (section.key=value)"
    )
    parser.add_argument(
        "--preset", help="preset name from configs/ or a YAML file (default: chosen by hardware)"
    )
    parser.add_argument("--root", help="artifact root (default: $PRODESC_ROOT, Drive in Colab, ./artifacts)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-keys", action="store_true", help="list every config key with its meaning and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def run_stage(prog: str, doc: str, argv: list[str] | None, body: Body) -> int:
    """Parse ``argv``, build the config and paths, run ``body``; return the exit code."""
    args = build_parser(prog, doc).parse_args(sys.argv[1:] if argv is None else argv)
    return run_guarded(lambda: _run(args, body), args.debug)


def _run(args: argparse.Namespace, body: Body) -> int:
    if args.list_keys:
        print(config_mod.list_keys())
        return 0
    overrides = list(args.overrides)
    if args.root:
        overrides.append(f"paths.root={args.root}")
    cfg = config_mod.load_config(args.preset, overrides, announce=log)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    root, origin = resolve_root(cfg.paths.root or None)
    paths = RunPaths.from_config(cfg, root)
    log(f"root: {root} ({origin}); preset: {cfg.preset}; run: {cfg.run_name}")
    body(cfg, paths)
    return 0
