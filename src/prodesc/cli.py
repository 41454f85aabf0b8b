"""The command line every numbered script shares.

    python src/0N_stage.py [--preset NAME|FILE.yaml] [--root DIR] [key=value ...]
                           [--print-config] [--list-keys] [--debug]

A stage is a function ``body(cfg, paths) -> None``. :func:`run_stage` parses the arguments, loads
the config, resolves the root, runs the body, and turns a :class:`UserError` into one line on
stderr and exit code 2 (a traceback only with ``--debug``). Nothing here imports torch.

A stage with arguments of its own passes ``extra_args`` (a function that adds them to the parser);
its body is then called as ``body(cfg, paths, args)``, and positionals that are not ``key=value``
are kept in ``args.words`` (the demo's titles) instead of being read as config overrides, unless
it passes ``words=False``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import textwrap
from typing import Callable

from prodesc import config as config_mod
from prodesc.config import Config
from prodesc.errors import run_guarded
from prodesc.paths import RunPaths, resolve_root

Body = Callable[[Config, RunPaths], None]
ExtraArgs = Callable[[argparse.ArgumentParser], None]

OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")
"""What a positional ``key=value`` override looks like (a title such as "2 m = 6 ft" does not)."""


def log(message: str) -> None:
    """Progress and choices go to stderr with a common prefix; results go to stdout."""
    print(f"[prodesc] {message}", file=sys.stderr, flush=True)


BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_NO_KERNELS = "Failed to load CPU gemm_4bit_forward from kernels-community"
"""bitsandbytes (0.50.2) logs this warning when it is imported on a CPU with AVX512-BF16 and the
optional `kernels` package (a faster 4-bit CPU kernel from the hub) is absent: in every CPU stage,
harmless, and read as an error."""


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with ``prefix``; lets the rest through."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_known_noise() -> None:
    """Drop exactly bitsandbytes' :data:`BNB_NO_KERNELS` warning (its other messages still show).
    Called before the stage imports anything; calling it again adds nothing."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(BNB_NO_KERNELS))


def build_parser(prog: str, doc: str, extra_args: ExtraArgs | None = None) -> argparse.ArgumentParser:
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
    if extra_args is not None:
        extra_args(parser)
    return parser


def run_stage(
    prog: str,
    doc: str,
    argv: list[str] | None,
    body: Callable[..., None],
    extra_args: ExtraArgs | None = None,
    words: bool = True,
) -> int:
    """Parse ``argv``, build the config and paths, run ``body``; return the exit code.

    With ``extra_args``, ``body(cfg, paths, args)`` gets the parsed arguments, and with ``words``
    the positionals that are not ``key=value`` in ``args.words`` (without, such a positional is
    the usual error about an override).
    """
    parser = build_parser(prog, doc, extra_args)
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)  # titles after options
    args.words = []
    if extra_args is None:
        return run_guarded(lambda: _run(args, body), args.debug)
    if words:
        args.words = [o for o in args.overrides if not OVERRIDE.match(o)]
        args.overrides = [o for o in args.overrides if OVERRIDE.match(o)]
    return run_guarded(lambda: _run(args, lambda cfg, paths: body(cfg, paths, args)), args.debug)


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
    silence_known_noise()
    body(cfg, paths)
    return 0
