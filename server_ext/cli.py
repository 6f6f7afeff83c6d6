"""``kqi``: the platform from a notebook terminal. This release: ``kqi layout``."""

from __future__ import annotations

import argparse
import json
import os
import sys


def cmd_layout(args: argparse.Namespace) -> int:
    layout = json.loads(os.environ.get("KQI_LAYOUT") or "{}")
    root = os.environ.get("KQI_ROOT")
    if not root:
        print("kqi: not inside a kqi server or job (KQI_ROOT is not set)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"kqi_root": root, **layout}, indent=1))
        return 0
    print(f"KQI_ROOT={root}")
    for b in layout.get("bindings", []):
        mode = "ro" if b["read_only"] else "rw"
        print(f"  {os.path.join(root, b['target']):40} {mode}  {b['source'] or '(fresh folder)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kqi", description="kqi platform commands")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("layout", help="what is mounted under $KQI_ROOT")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_layout)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
