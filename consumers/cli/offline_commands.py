"""`streamrec pretrain` and `streamrec evaluate`: offline training and evaluation from a dataset.

Both read a dataset from where the user keeps it (`--dataset movielens|beauty|generic --path`)
and run the same core the workers run (the ranker, the item table, the text encoder).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from streamrec.consumers.cli.common import configure_logging, load_settings

DATASETS = ("movielens", "beauty", "generic", "synthetic")


def _add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--path", type=Path, default=None,
                   help="dataset directory (movielens, beauty) or file (generic); synthetic needs none")
    p.add_argument("--items", type=Path, default=None, help="generic: item file (CSV/JSONL with id, text)")
    p.add_argument("--users-fraction", type=float, default=None, help="use a seeded sample of this share of users")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: STREAMREC_DEVICE)")
    p.add_argument("--model-dir", type=Path, default=None, help="model store (default: STREAMREC_MODEL_DIR)")


def add_offline_parsers(sub: argparse._SubParsersAction) -> None:
    from streamrec.consumers.cli.prequential_command import add_prequential_arguments
    from streamrec.models.learning.ranker import RankerConfig
    from streamrec.models.learning.training import TrainConfig

    model, train = RankerConfig(), TrainConfig()
    p = sub.add_parser("pretrain", help="train the ranker on a dataset and save a checkpoint")
    _add_dataset_arguments(p)
    p.add_argument("--init-from", default=None, help="warm-start from this checkpoint (id embeddings reset)")
    p.add_argument("--epochs", type=int, default=train.epochs)
    p.add_argument("--batch-size", type=int, default=train.batch_size)
    p.add_argument("--lr", type=float, default=train.lr)
    p.add_argument("--weight-decay", type=float, default=train.weight_decay)
    p.add_argument("--negatives", type=int, default=train.negatives)
    p.add_argument("--patience", type=int, default=train.patience)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--dim", type=int, default=model.dim)
    p.add_argument("--layers", type=int, default=model.layers)
    p.add_argument("--heads", type=int, default=model.heads)
    p.add_argument("--max-len", type=int, default=model.max_len)
    p.add_argument("--dropout", type=float, default=model.dropout)
    p.add_argument("--id-buckets", type=int, default=model.id_buckets)
    p.add_argument("--valid-users", type=int, default=5_000, help="users sampled for early stopping")
    p.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "evaluate",
        help="leave-one-out (baselines and a checkpoint) or prequential (the whole system, test-then-learn)",
    )
    _add_dataset_arguments(p)
    p.add_argument("--protocol", choices=["leave-one-out", "prequential"], default="leave-one-out")
    p.add_argument("--checkpoint", default=None, help="checkpoint version, or 'latest' (default: baselines only)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    add_prequential_arguments(p)
    p.set_defaults(func=cmd_evaluate)


def _context(args: argparse.Namespace) -> tuple[Any, Any, Any, Path]:
    """(settings, model store, torch device, cache dir) for an offline command."""
    from streamrec.models.core.device import select_device
    from streamrec.models.learning.store import DirectoryModelStore

    settings = load_settings()
    configure_logging("WARNING")
    logging.getLogger("streamrec").setLevel(logging.INFO)
    store = DirectoryModelStore(args.model_dir or settings.resolved_model_dir)
    device = select_device(args.device or settings.device)
    return settings, store, device, settings.data_dir / "cache"


def _dataset(args: argparse.Namespace) -> Any:
    from streamrec.models.data.sequences import load_sequences

    print(f"loading {args.dataset} from {args.path or 'the generator'} ...", flush=True)
    dataset = load_sequences(args.dataset, args.path, items_path=args.items, seed=args.seed)
    if args.users_fraction is not None:
        dataset = dataset.subset_users(args.users_fraction, args.seed)
    d = dataset.description
    print(f"{d.get('n_users')} users, {d.get('n_items')} items, {d.get('n_events')} events", flush=True)
    return dataset


def _encoder(settings: Any, device: Any) -> Any:
    from streamrec.models.core.encoder import TextEncoder

    return TextEncoder(settings.encoder_path, device=str(device), batch_size=settings.encoder_batch_size)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from streamrec.models.learning.pretrain import pretrain
    from streamrec.models.learning.ranker import RankerConfig
    from streamrec.models.learning.store import ModelStoreError
    from streamrec.models.learning.training import TrainConfig

    settings, store, device, cache = _context(args)
    try:
        model_config = RankerConfig(
            dim=args.dim, max_len=args.max_len, layers=args.layers, heads=args.heads,
            dropout=args.dropout, id_buckets=args.id_buckets,
        )
        train_config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
            negatives=args.negatives, patience=args.patience, seed=args.seed, max_steps=args.max_steps,
        )
        dataset = _dataset(args)
        encoder = _encoder(settings, device)
        print(f"training on {device}; checkpoints go to {store.root}", flush=True)
        report = pretrain(
            dataset, store, encoder, model_config, train_config, device,
            init_from=args.init_from, cache_dir=cache, valid_users=args.valid_users,
        )
    except (ValueError, FileNotFoundError, ModelStoreError) as exc:
        print(f"pretrain failed: {exc}", file=sys.stderr)
        return 1
    test = report.test
    print(f"\ncheckpoint {report.manifest.version} (parent {report.manifest.parent or '-'})")
    print(
        f"test (leave-one-out, all items): HR@10 {test.hr_at_10:.4f}  NDCG@10 {test.ndcg_at_10:.4f}  "
        f"MRR {test.mrr:.4f}  coverage@10 {test.coverage_at_10:.4f}  users {test.n_users}"
    )
    print(f"best epoch {report.training.best_epoch} of {len(report.training.epochs)}; "
          f"training {report.training.seconds:.0f}s on {device}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(json.loads(report.manifest.to_json()), indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from streamrec.models.evaluation.baselines import (
        CooccurrenceBaseline,
        MarkovBaseline,
        PopularityBaseline,
    )
    from streamrec.models.evaluation.metrics import (
        evaluate,
        evaluate_learner,
        leave_one_out,
        results_table,
    )
    from streamrec.models.learning.pretrain import load_for_evaluation
    from streamrec.models.learning.store import ModelStoreError

    context = _context(args)
    if args.protocol == "prequential":
        from streamrec.consumers.cli.prequential_command import cmd_prequential

        return cmd_prequential(args, context)
    settings, store, device, cache = context
    try:
        dataset = _dataset(args)
        split = leave_one_out(dataset)
        baselines: list[Any] = [PopularityBaseline(), CooccurrenceBaseline(window=20), MarkovBaseline()]
        models: list[Any] = []  # scorers of whole histories (a checkpoint), not learners
        checkpoint = None
        if args.checkpoint:
            version = None if args.checkpoint == "latest" else args.checkpoint
            manifest, ranker = load_for_evaluation(store, version, dataset, _encoder(settings, device), device, cache)
            checkpoint = manifest.version
            ranker.name = f"ranker {manifest.version}"
            models.append(ranker)
        rows = {}
        timings = {}
        for baseline in baselines:  # learn every user's history, then rank the held-out items
            started = time.perf_counter()
            rows[baseline.name] = evaluate_learner(baseline, split, progress=True)
            timings[baseline.name] = round(time.perf_counter() - started, 2)
        for model in models:
            started = time.perf_counter()
            model.fit(split.train, split.items)
            rows[model.name] = evaluate(model, split.test, split.items, progress=True)
            timings[model.name] = round(time.perf_counter() - started, 2)
    except (ValueError, FileNotFoundError, ModelStoreError) as exc:
        print(f"evaluate failed: {exc}", file=sys.stderr)
        return 1
    print(f"\n{args.dataset}, leave-one-out: last event per user ranked against all "
          f"{len(split.items)} items minus the user's history\n")
    print(results_table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "dataset": dataset.description,
            "protocol": "leave-one-out",
            "checkpoint": checkpoint,
            "results": {name: metrics.as_dict() for name, metrics in rows.items()},
            "seconds": timings,
        }, indent=2))
        print(f"\nwrote {args.out}")
    return 0
