"""What every benchmark's command line shares: the backend choice, `--tiny`, and size options that
default from the script's table of sizes (full and tiny)."""
from __future__ import annotations

import argparse
from collections.abc import Mapping


def parser(doc: str | None, sizes: Mapping[str, str], tiny: str) -> argparse.ArgumentParser:
    """`--backend`, `--tiny` (help: `tiny`), and one integer option per size (name → help)."""
    parsed = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parsed.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    for name, help_text in sizes.items():
        parsed.add_argument(f"--{name}", type=int, help=help_text)
    parsed.add_argument("--tiny", action="store_true", help=f"{tiny}: checks in seconds that the script runs "
                                                            "(figures mean nothing)")
    return parsed


def parse(parsed: argparse.ArgumentParser, table: Mapping[str, Mapping[str, int]]) -> argparse.Namespace:
    """The arguments, each size not given taken from the table's "tiny" or "full" row."""
    args = parsed.parse_args()
    for name, value in table["tiny" if args.tiny else "full"].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def backends(args: argparse.Namespace) -> list[str]:
    return ["postgres", "sqlite"] if args.backend == "both" else [args.backend]
