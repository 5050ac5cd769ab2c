"""`python -m training`: train specs, list, compare and prune the store, promote and roll back.

Exit codes of ``train``, for CI (``make train`` reports them as "Error N" and itself exits 2,
as make does for any failure):

- 0: every model trained was promoted, or was identical to production (nothing written);
- 1: an error (bad spec, data, estimator or store); it wins over 3 when both happen;
- 2: bad command-line usage;
- 3: a version was stored but not promoted (the gate refused it), and no error occurred;
- 130: interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from serving.store import ModelStore, StoreError, Task, TrafficMode
from training.errors import DataError, EstimatorError, ExportError, ScoreError
from training.spec import (
    Spec,
    SpecError,
    adhoc_csv_spec,
    load_spec,
    shipped_names,
    shipped_spec,
)

if TYPE_CHECKING:
    from training.run import TrainResult

# Each command imports what it needs when it runs (pandas, scikit-learn, ONNX Runtime take
# about a second): listing, promoting or rolling back then starts in a fraction of that.

DEFAULT_STORE = "models"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_PROMOTED = 3
_USER_ERRORS = (SpecError, DataError, EstimatorError, StoreError, ScoreError, ExportError)
FROM_CAPTURE = {"capture": "only", "capture+original": "with_original"}
"""``--from``: the spec's ``capture.use`` it sets."""


def _store(args: argparse.Namespace) -> ModelStore:
    # The same variables the service reads: one store, one key.
    key = os.environ.get("SERVEWELL_SIGNING_KEY")
    if key is not None and not key:
        # An empty key would write an unsigned store that a signed service then refuses.
        raise StoreError(
            "SERVEWELL_SIGNING_KEY is set but empty, which would turn signing off: set the "
            "key or unset the variable"
        )
    root = args.store or os.environ.get("SERVEWELL_STORE") or DEFAULT_STORE
    return ModelStore(root, signing_key=key.encode("utf-8") if key else None)


def _specs(args: argparse.Namespace) -> list[tuple[Spec, str]]:
    """The specs to train, each with the make command that retrains it with FORCE=1."""
    if args.data or args.target:
        if not (args.data and args.target):
            raise SpecError("ad-hoc training needs both DATA=file.csv and TARGET=column")
        from training.datasets import infer_csv_task

        path = Path(args.data)
        task = Task(args.task) if args.task else infer_csv_task(path, args.target)
        print(f"ad-hoc {task.value} on {path}, target {args.target!r}")
        options = [("TASK", args.task), ("NAME", args.name), ("ESTIMATOR", args.estimator)]
        extra = "".join(f" {k}={v}" for k, v in options if v)
        spec = adhoc_csv_spec(path, args.target, task, args.name, args.estimator)
        return [(spec, f"make train DATA={args.data} TARGET={args.target}{extra} FORCE=1")]
    if args.spec:
        return [(load_spec(path), f"make train SPEC={path} FORCE=1") for path in args.spec]
    names = args.model or shipped_names()
    return [(shipped_spec(name), f"make train MODEL={name} FORCE=1") for name in names]


def _from(args: argparse.Namespace, specs: list[tuple[Spec, str]]) -> list[tuple[Spec, str]]:
    """The specs with ``--from capture[+original]`` applied (the spec's capture section)."""
    source = getattr(args, "source", None)
    if not source:
        return specs
    use = FROM_CAPTURE[source]
    return [
        (spec.with_overrides({"capture": {"use": use}}), f"{retrain} FROM={source}")
        for spec, retrain in specs
    ]


def _report(result: TrainResult, retrain: str) -> int:
    m = result.manifest
    if result.identical:
        print(
            f"[{m.name}] identical to production v{m.version}: same data, spec and metrics; "
            "no new version (FORCE=1 makes one)"
        )
        return EXIT_OK
    print(f"[{m.name}] v{m.version}: {m.primary_metric}={m.primary_score:.4f}")
    if result.promoted:
        how = "forced, " if not result.decision.promote else ""
        print(f"[{m.name}] v{m.version} is now production ({how}{result.decision.reason})")
        return EXIT_OK
    print(f"[{m.name}] v{m.version} stored but NOT promoted: {result.decision.reason}")
    print(result.decision.comparison(m))
    print(f"    to promote this version anyway: make promote MODEL={m.name} VERSION={m.version}")
    print(f"    or retrain and promote regardless: {retrain}")
    return EXIT_NOT_PROMOTED


def cmd_train(args: argparse.Namespace) -> int:
    from training.capture_data import capture_url
    from training.run import train

    store = _store(args)
    specs = _from(args, _specs(args))  # every spec parses before anything trains
    url = capture_url(store.root)
    failures = 0
    refused = 0
    for spec, retrain in specs:
        try:
            result = train(spec, store, force_promote=args.force, capture_url=url)
            refused += _report(result, retrain) == EXIT_NOT_PROMOTED
        except _USER_ERRORS as exc:
            print(f"[{spec.name}] error: {exc}", file=sys.stderr)
            failures += 1
        except ValueError as exc:  # scikit-learn rejects data it cannot fit
            print(f"[{spec.name}] error while fitting: {exc}", file=sys.stderr)
            failures += 1
    if failures:
        return EXIT_ERROR
    return EXIT_NOT_PROMOTED if refused else EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from training.compare import render

    print(render(_store(args), args.name))
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    from training.prune import prune

    result = prune(_store(args), args.name, args.keep)
    removed = ", ".join(f"v{v}" for v in result.removed) or "nothing"
    kept = ", ".join(f"v{v}" for v in result.kept)
    print(f"[{args.name}] removed {removed}; kept {kept}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    store = _store(args)
    names = store.names()
    if not names:
        print(f"store {store.root} is empty; run `make train`")
        return 0
    print(f"store: {store.root}")
    print(
        f"{'model':<16} {'version':>7}  {'prod':<4}  {'created (UTC)':<19}  {'primary metric':<22}"
    )
    for name in names:
        production = store.production(name)
        for version in store.versions(name):
            prod = "*" if version == production else ""
            try:
                m = store.manifest(name, version)
            except StoreError as exc:
                print(f"{name:<16} {version:>7}  {prod:<4}  unreadable: {exc}")
                continue
            metric = f"{m.primary_metric}={m.primary_score:.4f}"
            created = m.created.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{name:<16} {version:>7}  {prod:<4}  {created:<19}  {metric:<22}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    store = _store(args)
    previous = store.promote(args.name, args.version)
    was = f"v{previous}" if previous is not None else "none"
    print(f"[{args.name}] production is now v{args.version} (was {was})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    store = _store(args)
    old, new = store.rollback(args.name)
    print(f"[{args.name}] rolled back production from v{old} to v{new}")
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    """Show, start or end a traffic experiment in the store (a running service applies it
    at its next poll, as it does a promotion)."""
    from serving.core.errors import InvalidInputError
    from serving.rollout.policy import TrafficRequest, build

    store = _store(args)
    name = args.name
    if args.command == "traffic" and args.end:
        ended = store.end_traffic(name)
        print(f"[{name}] " + ("no experiment was running" if ended is None else "experiment ended"))
        return 0
    if args.command != "traffic":
        production = store.production(name)
        if production is None:
            raise StoreError(f"model {name!r} has no production version; promote one first")
        mode = TrafficMode.SHADOW if args.command == "shadow" else TrafficMode.CANARY
        request = TrafficRequest(
            mode,
            version=args.version,
            sample=getattr(args, "sample", 1.0),
            weight=getattr(args, "weight", None),
            key_field=getattr(args, "key_field", None),
        )
        try:
            store.set_traffic(name, build(request, production, time.time()))
        except InvalidInputError as exc:
            problems = "; ".join(f"{d.loc[-1]}: {d.msg}" for d in exc.details)
            raise StoreError(f"{exc.message}: {problems}") from None
    policy = store.traffic(name)
    production = store.production(name)
    if policy is None:
        print(f"[{name}] production v{production} answers alone (no experiment)")
    else:
        print(f"[{name}] production v{production}; {policy.describe()}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    store = _store(args)
    if os.environ.get("SERVEWELL_SIGNING_KEY") is None:
        raise StoreError("signing needs SERVEWELL_SIGNING_KEY (the key the store was signed with)")
    failures = 0
    for name in args.model or store.names():
        for version in store.versions(name):
            try:
                changed = store.resign(name, version)
            except (StoreError, ValueError) as exc:  # ValueError: an unparsable manifest
                print(f"[{name}] v{version} NOT re-signed: {exc}", file=sys.stderr)
                failures += 1
                continue
            print(f"[{name}] v{version} {'re-signed' if changed else 'already signed'}")
    return 1 if failures else 0


def cmd_ensure_default(args: argparse.Namespace) -> int:
    store = _store(args)
    if store.names():
        print(f"store {store.root} has models: {', '.join(store.names())}")
        return 0
    print(f"store {store.root} is empty: training the shipped specs")
    args.spec = args.model = args.data = args.target = args.estimator = args.source = None
    args.force = False
    return cmd_train(args)


def cmd_score(args: argparse.Namespace) -> int:
    from training.score import Progress, peak_memory_mb, score_csv

    store = _store(args)
    data = Path(args.data)
    out = Path(args.out) if args.out else data.with_name(data.stem + ".scored.csv")
    if out.resolve() == data.resolve():
        raise ScoreError("the output file would overwrite the input")
    progress = Progress(data.stat().st_size if data.is_file() else 0)
    try:
        summary = score_csv(
            store,
            args.name,
            data,
            out,
            version=args.version,
            probabilities=args.probabilities,
            chunk_rows=args.chunk_rows,
            threads=args.threads,
            prefer_onnx=not args.sklearn,
            progress=progress.update,
        )
    finally:
        progress.close()
    s = summary
    print(
        f"[{s.name}] v{s.version} ({s.runtime}): {s.rows:,} rows in {s.seconds:.2f}s "
        f"({s.rows_per_second:,.0f} rows/s); {s.scored:,} scored, {s.refused:,} refused; "
        f"peak memory {peak_memory_mb():.0f} MB",
        file=sys.stderr,
    )
    print(f"predictions: {s.out}", file=sys.stderr)
    if s.refused:
        print(f"refused rows (row, column, reason): {s.errors}", file=sys.stderr)
    if s.out_of_range:
        ranked = sorted(s.out_of_range.items(), key=lambda kv: kv[1], reverse=True)
        shown = ", ".join(f"{name} ({count:,} rows)" for name, count in ranked[:5])
        more = f" and {len(ranked) - 5} more features" if len(ranked) > 5 else ""
        print(
            f"note: values outside the training range in {shown}{more}: predicted anyway, "
            "as the service does (extrapolations may be unreliable)",
            file=sys.stderr,
        )
    return 0


def cmd_export_capture(args: argparse.Namespace) -> int:
    from training.capture_data import capture_url, shown_url
    from training.export_capture import export_capture

    store = _store(args)
    url = capture_url(store.root)
    summary = export_capture(store, args.name, url, Path(args.out), chunk_rows=args.chunk_rows)
    s = summary
    print(
        f"[{args.name}] {s.rows:,} captured rows ({s.labelled:,} labelled) from {shown_url(url)} "
        f"to {s.out}"
    )
    if s.dropped_inputs:
        print(
            f"note: {s.dropped_inputs:,} input values under names the current features do not "
            "have (rows of another version) were left out",
            file=sys.stderr,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: a subcommand per command, with its options and help. Longer than
    ~60 lines on purpose: it is one flat table, read and compared in one place, which helpers
    per subcommand would only scatter."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument(
        "--store", help="model store root (default: $SERVEWELL_STORE or ./models)", default=None
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train shipped specs, a spec file or an ad-hoc CSV")
    p.add_argument("--model", action="append", help="shipped spec name (repeatable)")
    p.add_argument("--spec", action="append", help="path to a spec TOML (repeatable)")
    p.add_argument("--data", help="ad-hoc CSV file (with --target)")
    p.add_argument("--target", help="target column of the ad-hoc CSV")
    p.add_argument("--task", choices=[t.value for t in Task], help="default: inferred")
    p.add_argument("--name", help="model name for ad-hoc CSV (default: file name)")
    p.add_argument(
        "--estimator",
        help="ad-hoc CSV estimator: random_forest (default), extra_trees, gradient_boosting, "
        "hist_gradient_boosting, logistic_regression, linear_regression, ridge, knn",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="promote even if the gate refuses; store a version even if identical to production",
    )
    p.add_argument(
        "--from",
        dest="source",
        choices=sorted(FROM_CAPTURE),
        help="train on the model's labelled captured traffic (capture+original: with the spec's "
        "dataset too); the holdout is the newest traffic (the spec's [capture] section)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="every version side by side, and what changed")
    p.add_argument("name")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("prune", help="remove old versions but production and the previous one")
    p.add_argument("name")
    p.add_argument("--keep", type=int, required=True, help="newest versions to keep")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("models", help="list the store: versions, production, primary metric")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("promote", help="make a version the production version")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="return to the previous production version")
    p.add_argument("name")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("traffic", help="show a model's traffic experiment (--end: end it)")
    p.add_argument("name")
    p.add_argument("--end", action="store_true", help="end the experiment")
    p.set_defaults(func=cmd_traffic)

    p = sub.add_parser("shadow", help="let a version predict production's requests in shadow")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--sample", type=float, default=1.0, help="share of requests (0-1]")
    p.set_defaults(func=cmd_traffic)

    p = sub.add_parser("canary", help="let a version answer a share of requests")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--weight", type=float, required=True, help="percent of requests (0-100)")
    p.add_argument("--key-field", help="feature that keeps a user on one version")
    p.set_defaults(func=cmd_traffic)

    p = sub.add_parser(
        "sign",
        help="re-sign every version (signed with the old format) with SERVEWELL_SIGNING_KEY",
    )
    p.add_argument("--model", action="append", help="only this model (repeatable)")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser(
        "score", help="score a CSV file of any size (predictions to OUT, refused rows beside it)"
    )
    p.add_argument("name", help="model name")
    p.add_argument("data", help="input CSV with a header naming the model's features")
    p.add_argument("--out", help="output CSV (default: <data>.scored.csv)")
    p.add_argument("--version", type=int, help="model version (default: production)")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    p.add_argument("--chunk-rows", type=int, help="rows read at a time")
    p.add_argument("--threads", type=int, help="threads the model computes with (default: all)")
    p.add_argument(
        "--sklearn",
        action="store_true",
        help="predict with scikit-learn even where the service uses ONNX Runtime "
        "(a large forest predicts large batches faster with it)",
    )
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "export-capture",
        help="write a model's captured predictions and labels to a CSV (or Parquet) file",
    )
    p.add_argument("name", help="model name")
    p.add_argument("out", help="output file, .csv or .parquet (Parquet needs pyarrow)")
    p.add_argument("--chunk-rows", type=int, default=10_000, help="rows read at a time")
    p.set_defaults(func=cmd_export_capture)

    p = sub.add_parser("ensure-default", help="train the shipped specs if the store is empty")
    p.set_defaults(func=cmd_ensure_default)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except _USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing partial was written", file=sys.stderr)
        return 130
