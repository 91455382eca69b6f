"""Argument parsing only: `python -m report <train|explain>` calls the pipeline."""

from __future__ import annotations

import argparse
import os
import sys

from report.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m report",
        description="Audit a chest X-ray classifier with Grad-CAM and an HTML/PDF report.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands.add_parser("train", help="train, log and register a demo classifier"))
    _add_explain(commands.add_parser("explain", help="explain a registered model; write a report"))
    _add_bench(commands.add_parser("bench", help="images per second against the alternatives"))
    return parser


def _add_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-uri", default="models:/cxr-classifier@champion",
                        help="registered model to time; an untrained demo-shaped one if absent")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--method", default="gradcam",
                        choices=["gradcam", "gradcam++", "layercam", "scorecam"])
    parser.add_argument("--json", default="reports/bench.json", help="where to write results")


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="synthetic",
                        help="synthetic[:COUNT] or a folder with one subfolder per class")
    parser.add_argument("--backbone", default="small-cnn",
                        choices=["small-cnn", "vgg16", "resnet50v2", "xception", "densenet121"])
    parser.add_argument("--weights", default="none", choices=["none", "imagenet"],
                        help="imagenet downloads weights and so needs the network")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=237)
    parser.add_argument("--model-name", default="cxr-classifier")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--seed", type=int, default=0)


def _add_explain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-uri", default="models:/cxr-classifier@champion",
                        help="models:/NAME@ALIAS or models:/NAME/VERSION")
    parser.add_argument("--data", default="synthetic",
                        help="synthetic[:COUNT], a folder per class, or a public data set's "
                             "folder (auto-detected, or NAME:PATH; see docs/DATA.md)")
    parser.add_argument("--split", default="test", choices=["test", "train", "all"])
    parser.add_argument("--method", default="gradcam",
                        choices=["gradcam", "gradcam++", "layercam", "scorecam"])
    parser.add_argument("--layer", default="auto",
                        help="target layer name, outer/inner for nested models, or auto")
    parser.add_argument("--score", default="logit", choices=["logit", "probability"],
                        help="class score to explain: the pre-activation logit or the probability")
    parser.add_argument("--normalize", default="image", choices=["image", "global"],
                        help="map scaling: per image (min-max) or one scale for the whole report")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity, 0..1")
    parser.add_argument("--colormap", default="viridis", choices=["viridis", "jet", "inferno"])
    parser.add_argument("--limit", type=int, default=0, help="explain at most N images; 0 = all")
    parser.add_argument("--quality", default="fast", choices=["full", "fast", "off"],
                        help="explanation-quality checks: fast samples 32 images, full 128")
    parser.add_argument("--label-map", default="none",
                        help="YAML file mapping source labels to the model's classes (or null)")
    parser.add_argument("--unsafe-deserialization", nargs="?", const="yes", default="no",
                        choices=["yes", "no"],
                        help="load models holding serialized Python code (Lambda layers); only "
                             "for models whose author you trust")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "bench":
            return _bench(args)
        return _explain(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        # MLflow's errors are about the store or server (credentials, permissions, a refused
        # write): one line, not a traceback. Anything else is a bug and keeps its traceback.
        from mlflow.exceptions import MlflowException

        if not isinstance(error, MlflowException):
            raise
        from report.tracking import explain_mlflow_error

        print(f"error: {explain_mlflow_error(error)}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from report.pipeline import TrainSettings, train

    settings = TrainSettings(
        data=args.data,
        backbone=args.backbone,
        weights=None if args.weights == "none" else args.weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        image_size=args.image_size,
        model_name=args.model_name,
        alias=args.alias,
        seed=args.seed,
    )
    result = train(settings)
    print(
        f"Registered {result.model_name} version {result.model_version} as "
        f"@{result.alias} (test accuracy {result.test_accuracy:.1%}, run {result.run_id})"
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    from report.pipeline import ExplainSettings, explain

    settings = ExplainSettings(
        model_uri=args.model_uri,
        data=args.data,
        split=args.split,
        method=args.method,
        layer=args.layer,
        score=args.score,
        normalize=args.normalize,
        batch_size=args.batch_size,
        alpha=args.alpha,
        colormap=args.colormap,
        limit=args.limit,
        quality=args.quality,
        unsafe_deserialization=args.unsafe_deserialization == "yes",
        label_map=args.label_map,
    )
    result = explain(settings)
    print(f"Model:     {result.model}")
    print(f"Explained: {result.explained} images ({result.skipped} skipped)")
    print(f"Accuracy:  {result.accuracy:.1%}")
    print(f"MLflow run: {result.run_id}")
    print(result.html)
    print(result.pdf)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from report.bench import BenchSettings, run_bench

    run_bench(BenchSettings(args.model_uri, args.images, args.batch_size, args.method,
                            Path(args.json)))
    return 0
