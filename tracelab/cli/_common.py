"""Options shared by several subcommands."""

from __future__ import annotations

import argparse


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model: embedded (default), a local directory or a hub id")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")


def load(args: argparse.Namespace):
    from ..models import load_model

    return load_model(args.model, dtype=args.dtype)
