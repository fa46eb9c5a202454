"""`openlora` command line. Exit codes: 0 ok, 1 the operation failed, 2 bad config or input."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_FAILED = 1
EXIT_USAGE = 2


def _cmd_dev(args: argparse.Namespace) -> int:
    from node.dev import DevOptions, run_dev

    return run_dev(
        DevOptions(
            once=args.once,
            base_model=args.base_model,
            workdir=Path(args.workdir),
            jobs_per_adapter=args.jobs_per_adapter,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openlora", description="OpenLoRA node: serve LoRA adapters, get paid on chain"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser(
        "dev", help="the whole system on a local devnet: contracts, demo adapters, node, demo jobs"
    )
    dev.add_argument(
        "--once", action="store_true", help="exit after the demo jobs are paid (default: run until Ctrl-C)"
    )
    dev.add_argument("--base-model", default="smollm2-135m-instruct", help="base model to serve")
    dev.add_argument("--workdir", default="run/dev", help="where the devnet's state and logs go")
    dev.add_argument("--jobs-per-adapter", type=int, default=1)
    dev.set_defaults(func=_cmd_dev)

    from node.commands import adapter, doctor, jobs, node_ops, validator

    node_ops.register(sub)
    adapter.register(sub)
    jobs.register(sub)
    doctor.register(sub)
    validator.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from chain.client import ContractCallError
    from chain.tx import SimulationError
    from inference.ipfs.errors import FetchError
    from inference.publish import PublishError
    from inference.validate import AdapterRejected
    from node.commands.common import CommandError
    from node.config import ConfigError
    from node.errors import StartupError
    from node.keys import KeystoreError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, KeystoreError, StartupError, FileNotFoundError) as e:
        print(f"openlora: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (PublishError, AdapterRejected) as e:
        print(f"openlora: adapter refused: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (SimulationError, ContractCallError, CommandError, FetchError, TimeoutError) as e:
        print(f"openlora: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
