"""`python -m report <train|explain|bench|compare|methods>`: parse the flags (declared in
options.py), call the library, print the result, and turn what the user can fix into one line
on stderr with a non-zero exit: 2 for a mistake, 128 + the signal's number (143, 130) when
SIGTERM or Ctrl-C stopped the command. Nothing else happens here."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from report import lifecycle, options
from report.errors import UserError

DESCRIPTIONS = {
    "train": "train, log and register a demo classifier",
    "explain": "explain a model's predictions; write the report into an MLflow run",
    "bench": "images per second against the alternatives",
    "compare": "compare two model versions (champion against challenger) on the same images; "
               "exit 3 when --fail-on's gate fails",
    "methods": "which CAM method to believe for this model: every method and two baselines "
               "on one sample, scored by the trust checks and ranked",
}
GATE_FAILED = 3  # `compare --fail-on`: the candidate must not be promoted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m report",
        description="Audit a chest X-ray classifier with CAM heatmaps and an HTML/PDF report.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command, declared in options.COMMANDS.items():
        subparser = commands.add_parser(command, help=DESCRIPTIONS[command],
                                        description=DESCRIPTIONS[command])
        for option in declared:
            _add_flag(subparser, option)
    return parser


def _add_flag(parser: argparse.ArgumentParser, option: options.Option) -> None:
    # Values stay strings here; options.resolve converts and checks them, so the CLI and the
    # Python API refuse the same values with the same words.
    default = {None: "none", True: "yes", False: "no"}.get(option.default, option.default)
    allowed = f" ({'|'.join(option.choices)})" if option.choices else ""
    extra = {"nargs": "?", "const": "yes"} if option.kind == "bool" else {}
    parser.add_argument(option.flag, dest=option.name, default=None, metavar=_metavar(option),
                        help=f"{option.help}{allowed}; default {default}", **extra)


def _metavar(option: options.Option) -> str:
    return {"int": "N", "float": "X", "bool": "yes|no", "list": "A,B,..."}.get(option.kind,
                                                                            "VALUE")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    given = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        # The signal handlers outside the temporary folder: a signal still removes it.
        with lifecycle.signals_raise(), lifecycle.private_tempdir():
            values = options.resolve(args.command, given, style="cli")
            return COMMANDS[args.command](values)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # lifecycle.Terminated (SIGTERM) too
        print(f"error: stopped by {lifecycle.signal_name(interrupt)}; a started MLflow run "
              "is marked FAILED and keeps what it had logged", file=sys.stderr)
        return lifecycle.exit_status(interrupt)
    except OSError as error:
        # A folder the user named that cannot be written (full, read-only, a file in the
        # way, a name too long): one line. Any other OSError is a bug and keeps its traceback.
        if error.errno not in PATH_PROBLEMS:
            raise
        print(f"error: {describe_path_error(error)}", file=sys.stderr)
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


# The OSErrors a user's path causes, and what to do about each.
PATH_PROBLEMS = {
    errno.ENOSPC: "free some space or choose a folder on another disk",
    errno.EDQUOT: "free some space or choose a folder on another disk",
    errno.EFBIG: "choose a folder on another disk",
    errno.EACCES: "choose a folder you may write to, or change its permissions",
    errno.EPERM: "choose a folder you may write to, or change its permissions",
    errno.EROFS: "choose a folder on a writable disk",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ENOTDIR: "a file stands where a folder should be; move it or choose another path",
    errno.EISDIR: "a folder stands where a file should be; move it or choose another path",
    errno.EEXIST: "a file stands where a folder should be; move it or choose another path",
}


def describe_path_error(error: OSError) -> str:
    """`PATH: No space left on device; free some space ...` on one line."""
    where = "a file" if error.filename is None else os.fsdecode(error.filename)
    # A newline or an undecodable byte in the name shows escaped, on the one line.
    where = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace")
                    .decode("ascii") for c in where)
    reason = error.strerror or os.strerror(error.errno)
    return f"{where}: {reason}; {PATH_PROBLEMS[error.errno]}"


def _train(values: dict) -> int:
    from report.pipeline import train

    result = train(values)
    print(
        f"Registered {result.model_name} version {result.model_version} as "
        f"@{result.alias} (test accuracy {result.test_accuracy:.1%}, run {result.run_id})"
    )
    return 0


def _explain(values: dict) -> int:
    from report import i18n
    from report.pipeline import explain

    result = explain(values)
    with i18n.use(values["language"]):
        _ = i18n._
        print(_("Model:     %(model)s") % {"model": result.model})
        print(i18n.ngettext("Explained: %(count)s image (%(skipped)s skipped)",
                            "Explained: %(count)s images (%(skipped)s skipped)",
                            result.explained) % {"count": i18n.number(result.explained),
                                                 "skipped": i18n.number(result.skipped)})
        print(_("Accuracy:  %(accuracy)s") % {"accuracy": i18n.percent(result.accuracy)})
        print(_("MLflow run: %(run_id)s") % {"run_id": result.run_id})
    print(result.html)
    print(result.pdf)
    return 0


def _bench(values: dict) -> int:
    from pathlib import Path

    from report.bench import BenchSettings, run_bench

    if values["end_to_end"]:
        from report.bench_e2e import run_end_to_end

        run_end_to_end(values["end_to_end"], values["model_uri"], values["batch_size"],
                       values["sample"], Path(values["json"]).with_suffix(".e2e.json"),
                       values["spark_master"], values["stages"])
        return 0

    run_bench(BenchSettings(values["model_uri"], values["images"], values["batch_size"],
                            values["method"], Path(values["json"])))
    return 0


def _compare(values: dict) -> int:
    from report import i18n
    from report.pipeline import compare

    result = compare(values)
    with i18n.use(values["language"]):
        _ = i18n._
        verdict = _(result.verdict)  # "better", "worse", ... as the report words them
        if result.newly_flagged:
            print(_("verdict: the candidate is %(verdict)s; newly flagged for a shortcut: "
                    "%(classes)s") % {"verdict": verdict,
                                      "classes": ", ".join(result.newly_flagged)})
        else:
            print(_("verdict: the candidate is %(verdict)s") % {"verdict": verdict})
        print(_("run: %(run_id)s") % {"run_id": result.run_id})
        print(_("report: %(path)s") % {"path": result.html})
        print(_("report: %(path)s") % {"path": result.pdf})
    if result.gate_failures:
        print(f"gate --fail-on {values['fail_on']} failed: "
              + "; ".join(result.gate_failures), file=sys.stderr)
        return GATE_FAILED
    return 0


def _methods(values: dict) -> int:
    from report import i18n
    from report.pipeline import rank_methods

    result = rank_methods(values)
    with i18n.use(values["language"]):
        _ = i18n._
        if result.recommended:
            print(_("recommended: %(method)s") % {"method": result.recommended})
        else:
            print(_("recommended: none (no method passes the checks)"))
        print(_("run: %(run_id)s") % {"run_id": result.run_id})
        print(_("report: %(path)s") % {"path": result.html})
        print(_("report: %(path)s") % {"path": result.pdf})
    return 0


COMMANDS = {"train": _train, "explain": _explain, "bench": _bench, "compare": _compare,
            "methods": _methods}
