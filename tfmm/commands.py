"""The ``tfmm`` subcommands: parsed arguments -> library calls -> the printed result.

Each ``cmd_<command>(args) -> int`` returns the exit status; :data:`COMMANDS` maps command
names to them for :func:`tfmm.cli.main`.
"""

from __future__ import annotations

import json
import os
import sys

from tfmm.cli_parser import config_from_args, read_flags


def _with_read_flags(args, load=None):
    """The ``--model`` run, with the reading flags given here in its data config (its path
    when none is given: the run is loaded once, by the library call). ``load``: how ``--model``
    is loaded (default :func:`tfmm.run_dir.load_run`)."""
    overrides = read_flags(args)
    if not overrides:
        return args.model
    import dataclasses

    from tfmm.run_dir import load_run

    run = (load or load_run)(args.model)
    return dataclasses.replace(run, config=run.config.replace(data=overrides))


def cmd_prepare(args) -> int:
    from tfmm.config import DataConfig
    from tfmm.data.tfrecords import prepare_dataset

    config = DataConfig(**{k: v for k, v in read_flags(args).items() if k != "skip_bad_rows"})
    path = prepare_dataset(args.data, args.output_dir, shards=args.shards, config=config,
                           skip_bad_rows=bool(args.skip_bad_rows))
    print(f"wrote {path}")
    return 0


def cmd_train(args) -> int:
    from tfmm.training.train import train

    config = config_from_args(args)
    result = train(config, args.data, args.val_data, args.output_dir, overwrite=args.overwrite)
    last = {k: round(v[-1], 4) for k, v in result.history.items()}
    if result.initial_epoch:
        print(f"resumed at epoch {result.initial_epoch + 1} of {result.config.train.epochs} "
              f"({result.initial_epoch} epoch(s) were done before the interruption)")
    print(f"trained {len(result.history.get('loss', []))} epoch(s); last epoch: {json.dumps(last)}")
    print(f"run directory: {result.run_dir}")
    return 0


def format_metrics_table(rows: dict) -> str:
    """A plain-text table: one line per named metrics dict."""
    keys = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "n_examples")
    width = max(len(name) for name in rows) + 2
    lines = ["".ljust(width) + "".join(k.rjust(17) for k in keys)]
    for name, m in rows.items():
        cells = "".join((f"{m[k]:.4f}" if isinstance(m[k], float) else str(m[k])).rjust(17) for k in keys)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from tfmm.evaluation import reports
    from tfmm.evaluation.evaluate import evaluate
    from tfmm.tasks import get_task

    metrics = evaluate(_with_read_flags(args), args.data, report_dir=args.report_dir, ablate=args.ablate)
    print(get_task(metrics["task"]).summary(metrics))
    if "per_class" in metrics:
        print()
        print(reports.format_per_class(metrics))
    if args.ablate:
        print()
        print(reports.format_ablation(metrics["ablation"]))
    print(f"\nwrote the report to {os.path.abspath(args.report_dir or args.model)}")
    return 0


def _write_or_print(text: str, output, what: str) -> None:
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {what} to {output}")
    else:
        sys.stdout.write(text)


def _predict_saved_model(args) -> int:
    """``tfmm predict`` on an exported SavedModel: a REST body, a manifest or one image."""
    from tfmm.serving import protocol, saved_model

    if not saved_model.is_saved_model(args.model):
        raise ValueError(f"--request needs a SavedModel (a folder with saved_model.pb, or an export root); "
                         f"received {args.model!r}. Export the run first: tfmm export --model {args.model}")
    if args.request is not None:
        import tensorflow as tf

        with open(args.request, encoding="utf-8") as f:
            body = f.read()
        try:
            response, status = protocol.predict_rest(args.model, body), 0
        except (ValueError, tf.errors.OpError) as e:  # TF Serving answers HTTP 400 with this body
            response, status = {"error": getattr(e, "message", str(e))}, 1
            print(f"tfmm predict: the request failed; TF Serving would answer HTTP 400 with: {response}",
                  file=sys.stderr)
        _write_or_print(json.dumps(response, indent=4) + "\n", args.output, "the response body")
        return status
    if args.image is not None:
        if args.text is None:
            raise ValueError("--image needs --text (the caption that goes with it)")
        records = protocol.predict_saved_model(args.model, _single_example(args), k=args.top_k)
    else:
        data = args.data
        if read_flags(args):
            from tfmm.config import DataConfig
            from tfmm.data.manifest import read_manifest

            data = read_manifest(args.data, DataConfig(**read_flags(args)), require_labels=False)
        records = protocol.predict_saved_model(args.model, data, k=args.top_k)
    _write_or_print("".join(json.dumps(r) + "\n" for r in records), args.output, f"{len(records)} prediction(s)")
    return 0


def _single_example(args):
    """``--image PATH --text STR`` as a one-row manifest rooted at the image's folder."""
    import pandas as pd

    from tfmm.data.manifest import read_manifest

    image = os.path.abspath(args.image)
    frame = pd.DataFrame({"image": [image], "text": [args.text if args.text is not None else ""]})
    return read_manifest(frame, root=os.path.dirname(image), require_labels=False)


def _predict_model(args):
    """What ``tfmm predict --model`` names: a run, or a pretrained CLIP / SigLIP spec (an
    untrained contrastive run, :func:`tfmm.tasks.zero_shot.as_run`), with the reading flags."""
    from tfmm.tasks.zero_shot import as_run

    return _with_read_flags(args, load=as_run)


def cmd_predict(args) -> int:
    from tfmm.serving import saved_model
    from tfmm.evaluation.evaluate import predict

    if args.request is not None or saved_model.is_saved_model(args.model):
        return _predict_saved_model(args)
    zero_shot = None
    if args.zero_shot_labels is not None:
        zero_shot = [x.strip() for x in args.zero_shot_labels.split(",") if x.strip()]
    elif args.prompt is not None:
        raise ValueError("--prompt needs --zero-shot-labels")
    extra = dict(zero_shot_labels=zero_shot, prompt=args.prompt) if zero_shot is not None else {}
    if args.image is not None:
        if args.text is None and zero_shot is None:
            raise ValueError("--image needs --text (the caption that goes with it)")
        records = predict(_predict_model(args), _single_example(args), k=args.top_k, **extra)
    else:
        records = predict(_predict_model(args), args.data, k=args.top_k, **extra)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(lines)
        print(f"wrote {len(records)} prediction(s) to {args.output}")
    else:
        sys.stdout.write(lines)
    return 0


def cmd_export(args) -> int:
    from tfmm.serving.export_check import ExportCheckError
    from tfmm.serving.export import export_for_serving

    try:
        result = export_for_serving(
            args.model, args.export_dir, version=args.version, model_name=args.model_name,
            warmup_data=args.warmup_data, warmup_records=args.warmup_records, check=not args.no_check,
        )
    except ExportCheckError as e:
        print(f"tfmm export: error: {e}", file=sys.stderr)
        return 1
    print(f"exported {result.path} (model {result.model_name!r}, version {result.version})")
    print(f"  serving_default: {result.metadata['signatures']['serving_default']}")
    if result.report is not None:
        print("checks:\n" + "\n".join("  " + str(c) for c in result.report.checks))
    print(f"warmup: {result.warmup_source}")
    print(f"TF Serving: {result.metadata['serving']['summary']}")
    print(f"TF Serving configs: {os.path.join(result.export_root, 'models.config')}, "
          f"{os.path.join(result.export_root, 'batching.config')} (Docker instructions: README, Serve with Docker)")
    return 0


def cmd_check_export(args) -> int:
    from tfmm.serving.export_check import check_export

    report = check_export(args.dir)
    print(f"checked {report.path}")
    print(report)
    print("all checks passed" if report.ok else "SOME CHECKS FAILED")
    return 0 if report.ok else 1


def cmd_demo(args) -> int:
    from tfmm.demo import run_demo

    overrides = {k: v for k, v in (("epochs", args.epochs), ("n_train", args.n_train)) if v is not None}
    results = run_demo(args.output_dir, seed=args.seed, export_dir=args.export_dir, **overrides)
    print("\ntest metrics (label = colour + shape; shape is only in the image, colour only in the text):")
    print(format_metrics_table(results["metrics"]))
    print(f"\nfused run: {results['run_dirs']['fused']}")
    for line in results.get("notes", []):
        print(line)
    return 0


def _read_and_validate(args, source):
    """``(manifest, problems, config)``: ``source`` read and checked as ``args`` say (``--model``,
    ``--task``, ``--no-labels`` and the reading flags), with every problem printed and, with
    ``--report``, written to a CSV file."""
    import csv

    from tfmm.config import RunConfig
    from tfmm.data.manifest import read_manifest, validate_manifest
    from tfmm.tasks import get_task

    labels, preprocessor, config = None, None, RunConfig()
    if getattr(args, "model", None):
        from tfmm.run_dir import load_run

        run = load_run(args.model)
        config, preprocessor = run.config, run.preprocessor
        labels = None if args.no_labels else run.labels
    config = config.replace(data={k: v for k, v in read_flags(args).items() if k != "skip_bad_rows"})
    if args.task:
        config = config.replace(model={"task": args.task})
    task = get_task(config.model.task)
    require_labels = not args.no_labels and task.labels_required(config)
    manifest = read_manifest(source, config.data, require_labels=require_labels)
    problems = validate_manifest(manifest, encoding=task.encoding, labels=labels, config=config.data)
    for p in problems:
        print(p)
    if args.report:
        with open(args.report, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "row", "image", "reason"])
            writer.writerows([p.source, p.row, p.image, p.reason] for p in problems)
    if preprocessor is not None:
        from tfmm.data.validation import count_truncated

        truncated = count_truncated(manifest.frame["text"].tolist(), preprocessor)
        if truncated:
            print(f"note: {truncated} text(s) are longer than {config.data.sequence_length} tokens "
                  "and will be truncated")
    return manifest, problems, config


def _usable_line(source, manifest, problems) -> str:
    total = len(manifest) + len({p.row for p in manifest.problems})
    bad = len({p.row for p in problems})
    return f"{source}: {total - bad} of {total} row(s) usable, {bad} bad ({len(problems)} problem(s))"


def cmd_validate(args) -> int:
    manifest, problems, _ = _read_and_validate(args, args.data)
    print(_usable_line(args.data, manifest, problems))
    return 1 if problems else 0


def cmd_manifest(args) -> int:
    from tfmm.data.manifest import Manifest, write_manifest

    manifest, problems, _ = _read_and_validate(args, args.source)
    print(_usable_line(args.source, manifest, problems))
    if args.skip_bad_rows:
        bad = {p.row for p in problems}
        frame = manifest.frame[~manifest.frame["row"].isin(bad)].reset_index(drop=True)
        manifest = Manifest(frame, manifest.source, manifest.root)
    write_manifest(manifest, args.output)
    print(f"wrote {len(manifest)} row(s) to {args.output}")
    return 1 if problems and not args.skip_bad_rows else 0


def cmd_hub_export(args) -> int:
    from tfmm.models.hub_export import export_hub_bert_from_spec

    preprocess, encoder = export_hub_bert_from_spec(args.spec, args.output_dir, seq_length=args.seq_length)
    print(f"wrote {preprocess}\nwrote {encoder}")
    print(f"use it with: --text-encoder tfhub:{preprocess},{encoder}")
    return 0


# --tune-* option -> SearchSpace field
_TUNE_OPTIONS = {"tune_learning_rate": "learning_rate", "tune_dropout": "dropout", "tune_fusions": "fusion",
                 "tune_projection_dims": "projection_dim", "tune_unfreeze_image_blocks": "unfreeze_image_blocks",
                 "tune_unfreeze_text_layers": "unfreeze_text_layers"}


def cmd_tune(args) -> int:
    from tfmm.tuning import build_space, records, search
    from tfmm.tuning.space import FIELDS

    config = config_from_args(args)
    given = [name for name, (_, field) in FIELDS.items() if getattr(args, field, None) is not None]
    space = build_space(config, fixed=given, **{f: getattr(args, o) for o, f in _TUNE_OPTIONS.items()})
    result = search(config, args.data, args.val_data, args.output_dir, trials=args.trials, space=space,
                    objective=args.objective, algorithm=args.algorithm, overwrite=args.overwrite)
    print(records.format_table(result.rows, result.best_trial))
    best = next(r for r in result.rows if r["trial"] == result.best_trial)
    print(f"\nbest: trial {result.best_trial}, {result.objective} {best[result.objective]:.4f}")
    print(f"wrote {result.trials_csv}\nwrote {result.best_config_path}")
    print("retrain it with:\n  " + records.retrain_command(result.best_config_path, args.data, args.val_data,
                                                             result.cache_dir))
    return 0


COMMANDS = {
    "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo, "export": cmd_export,
    "check-export": cmd_check_export, "validate": cmd_validate, "hub-export": cmd_hub_export, "prepare": cmd_prepare,
    "manifest": cmd_manifest, "tune": cmd_tune,
}
