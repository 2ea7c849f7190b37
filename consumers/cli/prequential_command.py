"""`streamrec evaluate --protocol prequential`: replay a dataset through the workers' core and
the baselines, test-then-learn; print a table, write JSON totals and a PNG of the curves."""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BASELINES = ("popularity", "decayed-popularity", "cooccurrence", "markov", "funkmf", "biasedmf")


def add_prequential_arguments(p: argparse.ArgumentParser) -> None:
    from streamrec.models.evaluation.replay_system import VARIANTS

    g = p.add_argument_group("prequential protocol")
    g.add_argument("--k", type=int, default=10, help="list length (HR@K, NDCG@K, MRR@K)")
    g.add_argument("--warmup", type=float, default=0.2,
                   help="share of the stream learned before measuring starts; the first ranker version "
                        "is trained at its end (default 0.2)")
    g.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    g.add_argument("--sample-every", type=int, default=1, help="measure every n-th event (all are learned)")
    g.add_argument("--serve-lists", choices=["all", "measured"], default="measured",
                   help="measured (default): the full system serves lists at measured events only, and its "
                        "blend learns from those; all: at every event, warm-up included, as a worker does "
                        "(several times slower; on the Beauty and MovieLens prefixes the figures moved < 1%%)")
    g.add_argument("--batch-size", type=int, default=256, help="most events per micro-batch")
    g.add_argument("--systems", default=",".join(BASELINES + VARIANTS),
                   help=f"comma list of {', '.join(BASELINES + VARIANTS)} (default: all)")
    g.add_argument("--strong-rating", type=float, default=4.0,
                   help="movielens: ratings at or above count as clicks, below as views (<= 0: all views)")
    g.add_argument("--half-life", type=float, default=None,
                   help="decayed popularity half-life in event-time seconds (default: STREAMREC_TRENDING_HALF_LIFE_S)")
    g.add_argument("--bootstrap-epochs", type=float, default=10.0,
                   help="first ranker version: about this many passes over the trainer's window")
    g.add_argument("--trainer-window-s", type=float, default=math.inf,
                   help="trainer window age bound on the replay clock (default: none; datasets span years)")
    g.add_argument("--trainer-every-s", type=float, default=math.inf,
                   help="time-based cycles on the replay clock (default: none; every STREAMREC_TRAINER_EVERY_EVENTS)")
    g.add_argument("--plot", type=Path, default=None, help="PNG of the curves (default: next to --out)")
    g.add_argument("--synthetic-events", type=int, default=20_000, help="synthetic dataset: events generated")


def cmd_prequential(args: argparse.Namespace, context: tuple[Any, Any, Any, Path]) -> int:
    from streamrec.models.data.log import ORDER_RULE
    from streamrec.models.evaluation.prequential import PrequentialConfig, prequential, replay_order
    from streamrec.models.evaluation.replay_system import VARIANTS

    settings, _, device, cache = context
    wanted = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(BASELINES + VARIANTS))
    if unknown:
        print(f"evaluate failed: unknown systems {unknown}; choose from {', '.join(BASELINES + VARIANTS)}",
              file=sys.stderr)
        return 2
    try:
        config = PrequentialConfig(k=args.k, warmup=args.warmup, sample_every=args.sample_every,
                                   serve_all=args.serve_lists == "all", batch_size=args.batch_size, progress=True)
        dataset = _load(args)
        stream = replay_order(dataset, limit=args.limit)
        if not stream:
            raise ValueError("the dataset has no events")
    except (ValueError, FileNotFoundError) as exc:
        print(f"evaluate failed: {exc}", file=sys.stderr)
        return 1
    commit = _git_commit()  # the code that runs, not what HEAD is when a long replay ends
    k_settings = settings.model_copy(update={"k": args.k})
    logging.getLogger("streamrec").setLevel(logging.WARNING)  # the progress bar and the table say it
    half_life = args.half_life or settings.trending_half_life_s
    with tempfile.TemporaryDirectory(prefix="streamrec-prequential-") as work:
        systems = _baselines(wanted, half_life, args.seed)
        baseline_names = [system.name for system in systems]  # what the ratios are to (not the oracle)
        if args.dataset == "synthetic":  # the ceiling the generator allows, beside the systems
            from streamrec.models.evaluation.oracle import synthetic_oracle

            systems.insert(0, synthetic_oracle(args.seed))
        variants = [name for name in VARIANTS if name in wanted]
        vectors = None
        if variants:
            core, catalogue = _core_systems(args, k_settings, dataset, stream, variants, device, cache, Path(work))
            systems += core
            vectors = {item_id: item.vector for item_id, item in catalogue.items()}
        order = dataset.description.get("order")
        print(f"replaying {len(stream)} events through {len(systems)} systems "
              f"(measured from event {math.ceil(len(stream) * args.warmup)}"
              f"{f'; order: {order}' if order else ''}) ...", flush=True)
        started = time.perf_counter()
        result = prequential(stream, systems, config, item_vectors=vectors)
        seconds = time.perf_counter() - started
        for system in systems:
            close = getattr(getattr(system, "pipeline", None), "close", None)
            if close is not None:
                close()
    totals = {
        "dataset": dataset.description,
        "protocol": {
            "name": "prequential",
            "description": "each event, before it is learned: is its item in the user's top-K list now? "
                           "Candidates: items seen so far minus the user's consumed items.",
            "order": ORDER_RULE,
            "seed": args.seed,
            "limit": args.limit,
            "half_life_s": half_life,
        },
        "git_commit": commit,
        "seconds": round(seconds, 1),
        "baselines": baseline_names,
        **result.as_dict(),
    }
    print()
    print(results_table(totals))
    out = args.out or settings.data_dir / "eval" / f"{dataset.name}-prequential.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(totals, indent=2) + "\n")
    plot = args.plot or out.with_suffix(".png")
    plot_curves(totals, plot)
    print(f"\nwrote {out} and {plot}")
    return 0


def _load(args: argparse.Namespace) -> Any:
    from streamrec.models.data.sequences import load_sequences

    strong = args.strong_rating if args.strong_rating > 0 else None
    print(f"loading {args.dataset} from {args.path or 'the generator'} ...", flush=True)
    return load_sequences(args.dataset, args.path, items_path=args.items, seed=args.seed, strong_rating=strong,
                          synthetic_events=args.synthetic_events)


def _baselines(wanted: list[str], half_life: float, seed: int) -> list[Any]:
    from streamrec.models.evaluation import baselines as b

    make = {
        "popularity": b.PopularityBaseline,
        "decayed-popularity": lambda: b.DecayedPopularityBaseline(half_life),
        "cooccurrence": lambda: b.CooccurrenceBaseline(window=20),
        "markov": b.MarkovBaseline,
        "funkmf": lambda: b.RiverMFBaseline("FunkMF", seed=seed),
        "biasedmf": lambda: b.RiverMFBaseline("BiasedMF", seed=seed),
    }
    return [make[name]() for name in BASELINES if name in wanted]


def _core_systems(args: argparse.Namespace, settings: Any, dataset: Any, stream: list, variants: list[str],
                  device: Any, cache: Path, work: Path) -> tuple[list[Any], dict[str, Any]]:
    """The full-system variants, and the embedded catalogue they serve (item id -> item)."""
    from streamrec.models.core.encoder import TextEncoder
    from streamrec.models.evaluation.replay_system import (
        ReplayPlan,
        bootstrap_steps,
        build_core_systems,
        embed_catalogue,
    )

    encoder = TextEncoder(settings.encoder_path, device=str(device), batch_size=settings.encoder_batch_size)
    used = sorted({event.item_id for event in stream})
    catalogue = embed_catalogue(used, [dataset.item_text[i] for i in used],
                                [dataset.item_title.get(i, i) for i in used], encoder, cache)
    warmup_events = math.ceil(len(stream) * args.warmup)
    window = min(warmup_events, settings.trainer_window_events)
    plan = ReplayPlan(
        settings=settings, work_dir=work, device=device,
        bootstrap_after=max(warmup_events, settings.trainer_min_events),
        bootstrap_steps=bootstrap_steps(settings.trainer_steps, window, epochs=args.bootstrap_epochs),
        window_s=args.trainer_window_s, every_s=args.trainer_every_s,
    )
    print(f"full system: first version after {plan.bootstrap_after} events ({plan.bootstrap_steps} steps), "
          f"then a cycle every {settings.trainer_every_events} events ({settings.trainer_steps} steps, "
          f"window {settings.trainer_window_events} events)", flush=True)
    return build_core_systems(plan, catalogue, encoder, variants), catalogue


def results_table(totals: dict[str, Any]) -> str:
    """Markdown table of every system's warm, cold and overall figures, each system's ratio to
    the best baseline (HR and NDCG of users with history), and the lists' intra-list
    similarity where item vectors were known."""
    k = totals["k"]
    systems = totals["systems"]
    baselines = [name for name in totals.get("baselines", []) if name in systems]
    best_hr = max((systems[name]["warm"][f"hr@{k}"] for name in baselines), default=0.0)
    best_ndcg = max((systems[name]["warm"][f"ndcg@{k}"] for name in baselines), default=0.0)

    def ratio(value: float, best: float) -> str:
        return f"{value / best:.2f}x" if best > 0 else "-"

    lines = [
        f"| system | HR@{k} | NDCG@{k} | MRR@{k} | cold HR@{k} | all HR@{k} | HR / best baseline | "
        f"NDCG / best baseline | coverage@{k} | ILS@{k} | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in systems.items():
        warm, cold, both = row["warm"], row["cold"], row["all"]
        ils = row.get(f"ils@{k}")
        lines.append(
            f"| {name} | {warm[f'hr@{k}']:.4f} | {warm[f'ndcg@{k}']:.4f} | {warm[f'mrr@{k}']:.4f} | "
            f"{cold[f'hr@{k}']:.4f} | {both[f'hr@{k}']:.4f} | {ratio(warm[f'hr@{k}'], best_hr)} | "
            f"{ratio(warm[f'ndcg@{k}'], best_ndcg)} | {row[f'coverage@{k}']:.4f} | "
            f"{'-' if ils is None else f'{ils:.3f}'} | {row['seconds']:.0f} |"
        )
    warm_events = next(iter(systems.values()))["warm"]["events"] if systems else 0
    cold_events = next(iter(systems.values()))["cold"]["events"] if systems else 0
    lines.append("")
    lines.append(f"{warm_events} measured events of users with history (HR/NDCG/MRR), {cold_events} first "
                 f"events of users (cold); all = both. Ratios: to the best baseline "
                 f"({', '.join(baselines) or 'none run'}). ILS: mean text cosine within a list (1 = all alike).")
    for name, row in systems.items():
        recall = row.get("system", {}).get("candidate_recall")
        if recall and recall["judged"]:
            sources = ", ".join(f"{source} {share:.3f}" for source, share in recall["by_source"].items())
            lines.append(f"{name}: the next item was among the candidates in {recall['recall']:.3f} of "
                         f"{recall['judged']} lists judged (by the source that found it first: {sources}); "
                         f"HR@{k} / that = the share the top {k} kept.")
    return "\n".join(lines)


def plot_curves(totals: dict[str, Any], path: Path) -> None:
    """HR@K and NDCG@K per window against events seen, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = totals["k"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharex=True)
    for name, row in totals["systems"].items():
        xs = [point["events_seen"] for point in row["curve"]]
        axes[0].plot(xs, [point["hr"] for point in row["curve"]], label=name, linewidth=1.4)
        axes[1].plot(xs, [point["ndcg"] for point in row["curve"]], label=name, linewidth=1.4)
        for change in row.get("system", {}).get("versions", [])[:1]:
            axes[0].axvline(change["events_seen"], color="grey", linestyle=":", linewidth=0.8)
    axes[0].set_title(f"hit-rate@{k} per window")
    axes[1].set_title(f"NDCG@{k} per window")
    for axis in axes:
        axis.set_xlabel("events seen")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    name = totals["dataset"].get("dataset", "dataset")
    fig.suptitle(f"prequential (test-then-learn) on {name}, seed {totals['protocol']['seed']}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
