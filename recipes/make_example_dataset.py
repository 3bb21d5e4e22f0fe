"""Write the synthetic example dataset (coloured rectangles, 64x64 px) for trying `eligen train` offline.

    python recipes/make_example_dataset.py FOLDER [--count 64] [--size 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eligen.pipeline.train.example import write_example_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = parser.parse_args()
    write_example_dataset(args.folder, args.count, (args.size, args.size))
    print(f"wrote {args.count} samples to {args.folder / 'metadata.jsonl'}")


if __name__ == "__main__":
    main()
