"""The ``tfmm`` command: ``main`` parses the arguments (:mod:`tfmm.cli_parser`), configures
logging and runs the command's handler (:mod:`tfmm.commands`).

This is the only module that configures logging handlers; only the command handlers print.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfmm.cli_parser import build_parser  # noqa: E402
from tfmm.commands import COMMANDS  # noqa: E402

logger = logging.getLogger("tfmm")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    if not args.verbose:  # tf.distribute logs every collective it builds at INFO; absl (the
        # checkpoint writer of TensorBoard's projector) logs its sharding callback at INFO
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from tfmm.data.validation import ManifestError

    try:
        return COMMANDS[args.command](args)
    except (ManifestError, ValueError, FileNotFoundError, ImportError, OSError) as e:
        if args.verbose:
            raise
        print(f"tfmm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
