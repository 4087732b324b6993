"""``gradlab config --list`` (every config key, its default and meaning) and ``gradlab config
[CONFIG] [key=value ...]`` (the resolved, validated config as YAML; nothing is trained)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config", help="list the config keys, or check a config and print it resolved",
        description="With --list: every config key with its default and one line of meaning. "
                    "Otherwise: CONFIG (optional) and the overrides merged, validated and "
                    "printed as YAML, the config 'gradlab train' would run (nothing is trained).")
    p.add_argument("--list", action="store_true", help="list every key with its default")
    p.add_argument("config", type=Path, nargs="?", default=None, help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config is not None and "=" in str(args.config) and not args.config.exists():
        args.overrides, args.config = [str(args.config), *args.overrides], None  # no file
    if args.list:
        if args.config is not None or args.overrides:
            raise ValueError("--list takes no config file or overrides")
        from gradlab.cli.keys import key_table

        print("config keys (key = default), for YAML files and key=value overrides:")
        print(key_table())
        return 0
    import yaml

    from gradlab.config import load_config, to_dict

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
