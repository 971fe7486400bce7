"""python -m tinybert_jax.convert {hf-to-flax,flax-to-hf}: the conversion CLI over convert/hf_bert.py."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from tinybert_jax.convert.hf_bert import load_flax_dir, load_hf_bert, save_flax_dir, save_hf_bert
from tinybert_jax.errors import run_cli


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tinybert_jax.convert",
                                     description="Convert BERT checkpoints between Hugging Face and Flax.")
    sub = parser.add_subparsers(dest="command", required=True)
    to_flax = sub.add_parser("hf-to-flax", help="Hugging Face dir or hub id -> Flax checkpoint dir")
    to_flax.add_argument("src", help="Hugging Face checkpoint directory or hub id (e.g. bert-base-uncased)")
    to_flax.add_argument("out", help="output directory (bert_config.json + params)")
    to_flax.add_argument("--format", choices=("msgpack", "orbax"), default="msgpack")
    to_flax.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    to_hf = sub.add_parser("flax-to-hf", help="Flax checkpoint dir (msgpack or Orbax) -> Hugging Face dir")
    to_hf.add_argument("src", help="directory written by hf-to-flax (bert_config.json + params)")
    to_hf.add_argument("out", help="output Hugging Face directory")
    to_hf.add_argument("--tokenizer", help="directory whose tokenizer files are copied into the export")
    to_hf.add_argument("--labels", help="comma-separated label names in id order, for classifiers")
    to_hf.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)

    def convert() -> str:
        if args.command == "hf-to-flax":
            cfg, params = load_hf_bert(args.src)
            save_flax_dir(cfg, params, args.out, fmt=args.format, overwrite=args.overwrite)
        else:
            cfg, params = load_flax_dir(args.src)
            id2label = dict(enumerate(args.labels.split(","))) if args.labels else None
            save_hf_bert(cfg, params, args.out, tokenizer_dir=args.tokenizer, id2label=id2label,
                         overwrite=args.overwrite)
        return f"wrote {args.out}"

    return run_cli(convert)


if __name__ == "__main__":
    sys.exit(main())
