"""``attune tune``: sweep XGBoost rankers with Ray Tune, evaluate, export and register.

Arguments map one to one onto :class:`~attune.training.config.TuneConfig` fields and
are validated there (a bad value exits with status 4 and names the field; see
:mod:`attune.cli`). ``--features`` and ``--registry`` default to their places under
the store (:mod:`attune.layout`); the dataset must exist before Ray starts. Ray,
XGBoost and the rest load only when the command runs. ``jobs/tune.py`` uses the same
parser, so ``ray job submit -- python jobs/tune.py ...`` takes the same arguments.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``attune tune`` (shared with ``jobs/tune.py``)."""
    from attune.layout import add_store_argument

    add_store_argument(parser, "features", "registry")
    parser.add_argument(
        "--served",
        action="append",
        help="Reward dataset from `attune outcomes` to train on too (repeatable, or a folder).",
    )
    parser.add_argument(
        "--served-correction",
        choices=("none", "lambdarank_unbiased", "ipw"),
        help="Position/selection bias correction of the served rows (default none).",
    )
    parser.add_argument("--trials", type=int, default=8, help="Trials to sample (default 8).")
    parser.add_argument("--max-concurrent", type=int, help="Trials running at once.")
    parser.add_argument("--gpu", action="store_true", help="One GPU per trial, device=cuda.")
    parser.add_argument(
        "--histories", help="History root with ground_truth/ (default: the dataset manifest's)."
    )
    parser.add_argument("--cpus-per-trial", type=int, help="CPUs (XGBoost threads) per trial.")
    parser.add_argument("--max-rounds", type=int, help="Boosting-round budget per trial.")
    parser.add_argument(
        "--early-stopping-rounds", type=int, help="Patience on the selection metric."
    )
    parser.add_argument(
        "--select-by",
        choices=("policy_value", "ndcg"),
        help="Selection metric: estimated policy value on validation (default) or NDCG@3.",
    )
    parser.add_argument(
        "--weighting",
        choices=("none", "propensity"),
        help="Training slate weights from the logging propensities (default none).",
    )
    parser.add_argument("--scheduler", choices=("asha", "fifo"), help="Trial scheduler.")
    parser.add_argument("--grace-period", type=int, help="Rounds before ASHA may stop a trial.")
    parser.add_argument("--seed", type=int, help="Seed of the search and of XGBoost.")
    parser.add_argument(
        "--data-parallel-workers", type=int, help="Retrain the winner with Ray Train on N workers."
    )
    parser.add_argument("--name", help="Experiment name (default tune-<timestamp>).")
    parser.add_argument("--report-dir", help="Local directory for the table and plots.")
    parser.add_argument("--tune-storage", help="Tune's state and checkpoints (dir or s3://).")


def config_from_args(args: argparse.Namespace) -> Any:
    """A validated :class:`TuneConfig` from parsed arguments (unset ones take defaults)."""
    from attune.layout import resolve
    from attune.training.config import TuneConfig

    fields = set(TuneConfig.model_fields)
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["features"] = resolve(args, "features")
    values["registry"] = resolve(args, "registry")
    if not values.get("gpu"):
        values.pop("gpu", None)
    return TuneConfig.parse(values)


def checked_config(args: argparse.Namespace) -> Any:
    """:func:`config_from_args`, and the ranking dataset exists (checked before Ray starts)."""
    from attune.layout import require

    config = config_from_args(args)
    require(config.features, "ranking dataset")
    return config


def _run(args: argparse.Namespace) -> int:
    from attune.training.pipeline import train_and_register

    result = train_and_register(checked_config(args))
    share = result.share_of_oracle_lift
    print(
        f"registered {result.version_id} in {result.registry}: test NDCG@3 "
        f"{result.metrics['test']['ndcg@3']:.4f}, share of oracle lift {share:.1%}, "
        f"parity max |diff| {result.parity['max_abs_diff']:.2e}; plots in {result.report_dir}"
    )
    for name, why in sorted(result.skipped.items()):
        print(f"  not written: {name} ({why})")
    return 0


def register(subparsers: Any) -> None:
    """Add ``attune tune`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "tune",
        help="Sweep XGBoost rankers with Ray Tune, evaluate the winner and register it.",
        description=__doc__,
    )
    add_arguments(parser)
    parser.set_defaults(handler=_run)
