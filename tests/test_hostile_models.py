"""Hostile and careless models (issue 15): metadata, class names, other flavours, and the
names and cells the run writes from them. Every bad input is one line naming the field and
the fix; every valid but awkward name gets a safe, unique artifact name and metric key."""

from __future__ import annotations

import csv
import itertools
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from report.artifacts import (
    FORMULA_STARTS,
    ArtifactWriter,
    artifact_names,
    escape_cell,
    metric_keys,
    unescape_cell,
    unescape_predictions,
    write_predictions,
)
from report.errors import UserError
from report.model import (
    MAX_CLASS_NAME_LENGTH,
    MAX_IMAGE_SIDE,
    ModelMetadata,
    class_indices,
)
from tests.conftest import tiny_classifier

SIZE = 16  # tiny_classifier's input side: three softmax outputs over 16x16 RGB


@pytest.fixture(scope="module")
def tiny():
    return tiny_classifier(SIZE, "tiny_hostile")


@pytest.fixture(scope="module")
def saved_tiny(tiny, tmp_path_factory):
    """One MLflow model folder, saved once; each case copies it and edits its MLmodel file.
    pip_requirements=[] skips MLflow's inference, which reloads the model in a subprocess."""
    import mlflow

    folder = tmp_path_factory.mktemp("hostile") / "tiny"
    mlflow.keras.save_model(tiny, str(folder), pip_requirements=[])
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One throw-away sqlite store for this module's MLflow tests (creating one costs
    seconds), as conftest's `tracking_store` makes them; the experiment id to run in."""
    import mlflow

    folder = tmp_path_factory.mktemp("hostile-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        yield mlflow.create_experiment("hostile", artifact_location=(folder / "runs").as_uri())
        mlflow.set_tracking_uri(previous)


_copies = itertools.count()


def model_folder(saved, tmp_path, edit) -> str:
    """A copy of `saved` whose MLmodel description `edit(description)` changed."""
    folder = tmp_path / f"model{next(_copies)}"
    shutil.copytree(saved, folder)
    description = yaml.safe_load((folder / "MLmodel").read_text())
    edit(description)
    (folder / "MLmodel").write_text(yaml.safe_dump(description))
    return str(folder)


def assert_one_line(error: pytest.ExceptionInfo, *words: str) -> str:
    message = str(error.value)
    assert "\n" not in message and "\r" not in message, message
    assert len(message) < 400, message
    for word in words:
        assert word in message, message
    return message


# --- metadata ---------------------------------------------------------------------------

# (metadata, a word the message must contain: the field it names)
BAD_METADATA = [
    *[({"preprocessing": value}, "preprocessing")
      for value in ([1, 2], "rgb", 3, True)],
    *[({"preprocessing": {"image_size": value}}, "image_size")
      for value in ([0, 0], [0, SIZE], [-1, SIZE], [SIZE, -SIZE], "16", ["a", "b"], [1.5, SIZE],
                    [SIZE, 2.5], True, [True, SIZE], [SIZE, SIZE, SIZE], [SIZE], SIZE, [],
                    {"h": SIZE}, [None, SIZE], [float("nan"), SIZE], [float("inf"), SIZE],
                    [MAX_IMAGE_SIDE + 1, SIZE], [10**9, 10**9])],
    *[({"preprocessing": {"scale": value}}, "scale")
      for value in ("x", "1/255", float("nan"), float("inf"), 0, 0.0, -1, -1 / 255, [1], True,
                    {"a": 1})],
    *[({"preprocessing": {"color": value}}, "color")
      for value in ("cmyk", "", 3, ["rgb"], True)],
    # Declared input: 16x16 RGB.
    ({"preprocessing": {"color": "grayscale"}}, "grayscale"),
    ({"preprocessing": {"image_size": [32, 32]}}, "image_size"),
    ({"preprocessing": {"image_size": [SIZE, SIZE + 1]}}, "image_size"),
    *[({"target_layer": value}, "target_layer") for value in (3, ["features"], {"a": 1}, True)],
    *[({"class_names": value}, "class_names")
      for value in ("abc", 3, {"a": 0, "b": 1, "c": 2}, True)],
]


@pytest.mark.parametrize(("metadata", "field"), BAD_METADATA,
                         ids=[repr(m)[:60] for m, _ in BAD_METADATA])
def test_impossible_metadata_is_one_line_naming_the_field(tiny, metadata, field):
    with pytest.raises(UserError) as error:
        ModelMetadata.from_mlflow(metadata, tiny)
    assert_one_line(error, field)


@pytest.mark.parametrize("metadata", [[1, 2], "garbage", 7, True])
def test_metadata_that_is_not_a_mapping_is_refused(tiny, metadata):
    with pytest.raises(UserError) as error:
        ModelMetadata.from_mlflow(metadata, tiny)
    assert_one_line(error, "metadata", "mapping")


def test_sane_metadata_still_loads_with_integral_floats(tiny):
    metadata = ModelMetadata.from_mlflow(
        {"class_names": ["a", "b", "c"], "preprocessing": {
            "image_size": [float(SIZE), SIZE], "color": "rgb", "scale": 1}}, tiny)
    assert metadata.image_size == (SIZE, SIZE) and metadata.scale == 1.0
    assert ModelMetadata.from_mlflow({"preprocessing": None}, tiny).image_size == (SIZE, SIZE)


def test_a_model_with_free_spatial_size_takes_the_declared_size_up_to_the_bound():
    import keras
    from keras import layers

    free = keras.Sequential([keras.Input((None, None, 1)), layers.Conv2D(2, 3),
                             layers.GlobalAveragePooling2D(), layers.Dense(2)])
    ok = ModelMetadata.from_mlflow({"preprocessing": {"image_size": [300, 200]}}, free)
    assert ok.image_size == (300, 200) and ok.color == "grayscale"
    with pytest.raises(UserError) as error:
        ModelMetadata.from_mlflow({"preprocessing": {"image_size": [MAX_IMAGE_SIDE * 2, 8]}},
                                  free)
    assert_one_line(error, "image_size", str(MAX_IMAGE_SIDE))


def test_a_model_that_is_not_a_single_image_classifier_is_refused():
    import keras
    from keras import layers

    backbone = keras.Sequential([keras.Input((SIZE, SIZE, 3)), layers.Conv2D(4, 3)])
    with pytest.raises(UserError) as error:
        ModelMetadata.from_mlflow(None, backbone)
    assert_one_line(error, "output")
    image, extra = keras.Input((SIZE, SIZE, 3)), keras.Input((4,))
    pooled = layers.GlobalAveragePooling2D()(image)
    two = keras.Model([image, extra], layers.Dense(2)(layers.Concatenate()([pooled, extra])))
    with pytest.raises(UserError) as error:
        ModelMetadata.from_mlflow(None, two)
    assert_one_line(error, "input")
    four = keras.Sequential([keras.Input((SIZE, SIZE, 4)), layers.GlobalAveragePooling2D(),
                             layers.Dense(2)])
    with pytest.raises(UserError) as error:
        ModelMetadata.from_mlflow(None, four)
    assert_one_line(error, "4")


# --- class names ------------------------------------------------------------------------

CONTROL = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e",
           "\u2066"]
# (class names, the offending one the message quotes)
BAD_NAMES = [
    (["", "b", "c"], ""), ([" ", "b", "c"], " "), (["a", "\u3000", "c"], "\u3000"),
    (["a", "b", "\t "], "\t "),
    *[(["a", f"x{c}y", "c"], f"x{c}y") for c in CONTROL],
    *[(["a", f"{c}x", "c"], f"{c}x") for c in ("\n", "\x00")],
    *[(["a", "b", "x" * length], "x" * length)
      for length in (MAX_CLASS_NAME_LENGTH + 1, 300, 10_000)],
    (["a", "a", "b"], "a"), (["a", "A", "b"], "A"), (["Straße", "STRASSE", "b"], "STRASSE"),
    (["\u00e9", "e\u0301", "b"], "e\u0301"),  # one letter, composed and decomposed (NFC)
    (["a", " a", "b"], " a"), (["a", "b", "B "], "B "),
    ([1, 2, 3], 1), (["a", None, "c"], None), (["a", True, "c"], True),
    (["a", ["b"], "c"], ["b"]), (["a", 1.5, "c"], 1.5),
    (["a", "b\udcff", "c"], "b\udcff"),  # a lone surrogate: an undecodable file name's byte
]


@pytest.mark.parametrize(("names", "offender"), BAD_NAMES,
                         ids=[repr(n)[:40] for n, _ in BAD_NAMES])
@pytest.mark.parametrize("source", ["metadata", "option"])
def test_bad_class_names_are_one_line_naming_the_name(tiny, names, offender, source):
    with pytest.raises(UserError) as error:
        if source == "metadata":
            ModelMetadata.from_mlflow({"class_names": names}, tiny)
        else:
            ModelMetadata.from_mlflow(None, tiny, class_names=names)
    message = assert_one_line(error, "class_names" if source == "metadata" else "class-names")
    assert repr(offender)[:30] in message


def test_class_names_given_as_an_option_replace_the_metadata_after_the_same_checks(tiny):
    metadata = ModelMetadata.from_mlflow({"class_names": ["x", "y", "z"]}, tiny,
                                         class_names=["A/B", "A_B", "Ünïcode: yes?"])
    assert metadata.class_names == ("A/B", "A_B", "Ünïcode: yes?")


def test_direct_construction_checks_the_same_rules():
    with pytest.raises(UserError):
        ModelMetadata(("a", "A"), (8, 8))
    with pytest.raises(UserError):
        ModelMetadata(("a", "b"), (0, 8))
    with pytest.raises(UserError):
        ModelMetadata(("a", "b"), (8, 8), scale=float("nan"))
    with pytest.raises(UserError):
        ModelMetadata(("a", "b"), (8, 8), color="cmyk")


# --- the explained class in report.explain ----------------------------------------------


@pytest.mark.parametrize("classes", [[3], [-2], [0, 1, 2], ["nope"], [1.5], [[0]], "a",
                                     [True], [None]])
def test_explained_classes_must_name_or_index_a_class(classes):
    with pytest.raises(UserError) as error:
        class_indices(classes, ("a", "b", "c"), 1 if classes not in ([0, 1, 2],) else 2)
    assert_one_line(error, "classes")


def test_explained_classes_by_index_or_name():
    names = ("a", "b", "c")
    assert class_indices([2, "a", np.int64(1)], names, 3).tolist() == [2, 0, 1]
    assert class_indices(None, names, 2) is None
    assert class_indices(np.array([0, 1]), names, 2).dtype == np.int32


# --- models of another kind, and garbage MLmodel files ----------------------------------


def _set(key, value):
    return lambda description: description.__setitem__(key, value)


def _flavour(value):
    return lambda description: description["flavors"].__setitem__("keras", value)


GARBAGE_MODELS = [
    (_set("metadata", [1, 2]), "metadata"),
    (_set("metadata", "garbage"), "metadata"),
    (_set("metadata", {"class_names": "abc"}), "class_names"),
    (_set("metadata", {"class_names": ["a", "a", "b"]}), "class_names"),
    (_set("metadata", {"preprocessing": {"image_size": [0, 0]}}), "image_size"),
    (_set("flavors", ["keras"]), "MLmodel"),
    (_set("flavors", "keras"), "MLmodel"),
    (_flavour("garbage"), "Keras"),
    (_flavour({"data": "../../elsewhere", "keras_version": "3"}), "Keras"),
]


@pytest.mark.parametrize(("edit", "word"), GARBAGE_MODELS,
                         ids=[str(i) for i in range(len(GARBAGE_MODELS))])
def test_garbage_model_folders_are_one_line(saved_tiny, tmp_path, edit, word):
    from report.tracking import load_model

    folder = model_folder(saved_tiny, tmp_path, edit)
    with pytest.raises(UserError) as error:
        load_model(folder)
    assert_one_line(error, word)


@pytest.mark.parametrize("damage", ["not yaml", "list", "empty data", "no data"])
def test_damaged_model_files_are_one_line(saved_tiny, tmp_path, damage):
    from report.tracking import load_model

    folder = tmp_path / "damaged"
    shutil.copytree(saved_tiny, folder)
    if damage == "not yaml":
        (folder / "MLmodel").write_text("flavors: [unclosed\n  : :\n")
    elif damage == "list":
        (folder / "MLmodel").write_text("- a\n- b\n")
    elif damage == "empty data":
        for path in (folder / "data").rglob("*"):
            if path.is_file():
                path.write_bytes(b"garbage")
    else:
        shutil.rmtree(folder / "data")
    with pytest.raises(UserError) as error:
        load_model(str(folder))
    assert_one_line(error, str(folder))


def test_a_registered_plain_pyfunc_is_one_line(store):
    import mlflow

    from report.tracking import load_model

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    with mlflow.start_run(experiment_id=store):
        mlflow.pyfunc.log_model(name="echo", python_model=Echo(), pip_requirements=[],
                                registered_model_name="plain-pyfunc")
    with pytest.raises(UserError) as error:
        load_model("models:/plain-pyfunc/1")
    assert_one_line(error, "Keras flavour", "mlflow.keras")


def test_loaded_folder_carries_checked_metadata(saved_tiny, tmp_path):
    from report.tracking import load_model

    folder = model_folder(saved_tiny, tmp_path, _set("metadata", {
        "class_names": ["=HYPERLINK(\"x\")", "A/B", "A_B"],
        "preprocessing": {"image_size": [SIZE, SIZE], "color": "rgb", "scale": 0.5}}))
    loaded = load_model(folder)
    assert loaded.metadata.class_names[1:] == ("A/B", "A_B")
    assert loaded.metadata.scale == 0.5


# --- safe artifact names and metric keys --------------------------------------------------

AWKWARD = [
    ("A/B", "A_B", "A:B"), ("x/", "x", "x_"), ("não", "nao", "NÃO?"), (".", "..", "..."),
    ("con", "NUL", "aux.txt"), ("=cmd|' /C calc'!A0", "+1", "@SUM(A1)"),
    ("a" * 100, "a" * 99 + "b", "a" * 99 + "/"), ("-rf", "~root", "$HOME"),
    ("unlabelled", "Unlabelled thing", "b"), ("Ünïcode", "中文", "😀"), ("a b", "a_b", "a-b"),
    ("_x", "x_", "__"),
]
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@pytest.mark.parametrize("names", AWKWARD, ids=[repr(n)[:30] for n in AWKWARD])
def test_awkward_class_names_get_safe_unique_artifact_names(tiny, names):
    ModelMetadata.from_mlflow({"class_names": list(names)}, tiny)  # all valid class names
    safe = artifact_names(names)
    assert set(safe) == set(names)
    folded = [name.casefold() for name in safe.values()]
    assert len(set(folded)) == len(names), safe
    assert "unlabelled" not in folded  # the folder of images without a label
    for name in safe.values():
        assert SAFE_NAME.fullmatch(name) and len(name) <= 64 and not name.endswith("."), name
        assert name.split(".")[0].upper() not in ("CON", "NUL", "AUX", "PRN"), name
    assert artifact_names(names) == safe  # the same every time
    plain = [name for name in names if SAFE_NAME.fullmatch(name) and len(name) <= 64
             and name.casefold() != "unlabelled" and not name.endswith(".")
             and name.split(".")[0].upper() not in ("CON", "NUL", "AUX", "PRN")]
    assert all(safe[name] == name for name in plain)  # ordinary names are left alone


def test_overlay_folders_stay_inside_and_apart(tmp_path):
    names = ("A/B", "A_B", "../..")
    with ArtifactWriter(tmp_path, names, "conv", (8, 8)) as writer:
        for label in range(3):
            writer.add_overlay(f"img{label}", label, b"png")
    folders = sorted(p for p in (tmp_path / "overlays").iterdir())
    assert len(folders) == 3 and all(p.parent == tmp_path / "overlays" for p in folders)
    assert {p.name for p in folders} == set(artifact_names(names).values())
    assert sorted(tmp_path.iterdir()) == [tmp_path / "cams", tmp_path / "overlays",
                                          tmp_path / "predictions.csv"]


def _mlflow_refuses(key: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, _validate_metric_name

    try:
        _validate_metric_name(key)
    except MlflowException:
        return True
    return len(key) > MAX_ENTITY_KEY_LENGTH


HOSTILE_KEYS = [f"roc_auc.{name}" for names in AWKWARD for name in names] + [
    "roc_auc.x/", "roc_auc.x//y", "roc_auc./x", "roc_auc.x/../y", "..", ".", "", "/abs",
    "roc_auc." + "x" * 300, "roc_auc." + "x" * 299, "roc_auc.tab\there", "roc_auc.nl\nhere",
    "shortcut.border.A:B", "shortcut.border.A_B", "ece", "roc_auc.macro", "roc_auc.A",
    "roc_auc.a",
]


def test_every_metric_key_becomes_a_valid_unique_mlflow_key():
    keys = metric_keys(HOSTILE_KEYS)
    assert list(keys) == list(dict.fromkeys(HOSTILE_KEYS))
    assert len(set(keys.values())) == len(keys)
    assert not [key for key in keys.values() if _mlflow_refuses(key)]
    for ordinary in ("ece", "roc_auc.macro", "roc_auc.A", "roc_auc.a", "shortcut.border.A_B"):
        assert keys[ordinary] == ordinary
    assert keys["roc_auc.não"] == "roc_auc.nao" or keys["roc_auc.nao"] != keys["roc_auc.não"]
    assert metric_keys(HOSTILE_KEYS) == keys


def test_hostile_class_names_log_as_metrics_and_overlay_charts(store):
    import mlflow
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    from report import tracking

    names = [name for names in AWKWARD for name in names]
    with mlflow.start_run(experiment_id=store) as run:
        tracking.log_metrics({f"roc_auc.{name}": 0.5 for name in names} | {"ece": 0.1})
        tracking.log_overlay_charts(
            {name: [np.zeros((4, 4, 3), np.uint8)] for name in AWKWARD[0] + AWKWARD[2]}, 1)
        tracking.set_note("| class |\n" + "| =x |\n" * 5000)  # a table of many classes
    logged = mlflow.get_run(run.info.run_id).data
    assert len(logged.metrics) == len(set(names)) + 1
    assert logged.metrics["ece"] == pytest.approx(0.1)
    note = logged.tags[tracking.NOTE_TAG]
    assert len(note) <= MAX_TAG_VAL_LENGTH and note.endswith(tracking.NOTE_CUT)


# --- predictions.csv: formula injection ---------------------------------------------------

FORMULAS = ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "=HYPERLINK(\"http://x\")",
            "-", "'=1", "''+x"]


@pytest.mark.parametrize("text", FORMULAS + ["plain", "", "a=b", "1-2", "'quoted", "0.5"])
def test_escape_cell_is_reversible_and_defuses_formulas(text):
    escaped = escape_cell(text)
    assert not escaped.startswith(FORMULA_STARTS)
    assert unescape_cell(escaped) == text
    if not text.lstrip("'").startswith(FORMULA_STARTS):
        assert escaped == text  # ordinary cells are left as they are


def _spreadsheet_would_evaluate(cell: str) -> bool:
    return cell.startswith(FORMULA_STARTS)


@pytest.mark.parametrize("keep_rows", [False, True])
def test_predictions_csv_escapes_every_text_cell_a_spreadsheet_would_run(tmp_path, keep_rows):
    names = ("=cmd|' /C calc'!A0", "+PNEUMONIA", "NORMAL")
    ids = ["-img0", "@img1", "img2"]
    sources = ["=HYPERLINK(\"http://evil\")", "\t=1+1", "/data/img2.png"]
    with ArtifactWriter(tmp_path, names, "conv", (8, 8), keep_rows=keep_rows) as writer:
        for i in range(3):
            writer.add_prediction(ids[i], sources[i], i, np.array([0.2, 0.3, 0.5]), 2,
                                  np.zeros((2, 2), np.float32), flags=["-flag"] if i else [])
        writer.add_skipped("-bad", "+/data/bad.png", 0, "=reason")
        writer.add_skipped("bad2", "/data/bad2.png", None, "empty file")
    if keep_rows:
        write_predictions(tmp_path / "predictions.csv", names,
                          [line for _, line in writer.rows + writer.skipped_rows])
    with open(tmp_path / "predictions.csv", newline="", encoding="utf-8") as file:
        header, *rows = list(csv.reader(file))
    probabilities = [i for i, column in enumerate(header) if column.startswith("prob_")]
    assert len(rows) == 5 and len(probabilities) == 3
    for row in rows:
        for i, cell in enumerate(row):
            if i in probabilities:
                assert cell == "" or math.isfinite(float(cell))  # numbers untouched
            else:
                assert not _spreadsheet_would_evaluate(cell), (i, cell)
    assert rows[0][:4] == ["'-img0", "'=HYPERLINK(\"http://evil\")", "'=cmd|' /C calc'!A0",
                           "NORMAL"]
    assert rows[0][4:7] == ["0.200000", "0.300000", "0.500000"]
    assert rows[1][2] == "'+PNEUMONIA" and rows[2][-1] == "'-flag"
    assert rows[3][:3] == ["'-bad", "'+/data/bad.png", "'=cmd|' /C calc'!A0"]
    assert rows[4] == ["bad2", "/data/bad2.png", "unlabelled", "", "", "", "", "",
                       "unreadable: empty file"]
    assert [unescape_cell(cell) for cell in rows[0][:3]] == [ids[0], sources[0], names[0]]
    table = unescape_predictions(pd.read_csv(tmp_path / "predictions.csv", dtype=str,
                                             keep_default_na=False))
    assert table["image_id"].tolist()[:4] == [*ids, "-bad"]
    assert table["true_label"].tolist()[:3] == list(names)
    assert table["source"].tolist()[:2] == sources[:2]


# --- end to end: the class_names option -------------------------------------------------


def test_awkward_class_names_survive_an_audit_and_its_mlflow_run(tiny, store):
    import mlflow

    import report

    names = ["a/", "A_B", "=x:ñ"]
    pixels = np.random.default_rng(0).integers(0, 255, (6, SIZE, SIZE, 3)).astype(np.uint8)
    audit = report.audit(tiny, (pixels, [0, 1, 2, 0, 1, 2]), class_names=names, quality="off")
    folders = sorted(p.name for p in (audit.artifacts_dir / "overlays").iterdir())
    assert folders == sorted(artifact_names(names).values())
    run_id = audit.log_to_mlflow()
    logged = mlflow.get_run(run_id).data
    assert not [key for key in logged.metrics if _mlflow_refuses(key)]
    assert any(key.startswith("roc_auc.a") for key in logged.metrics)


@pytest.mark.slow
def test_a_bad_class_names_option_is_one_line_from_the_cli(saved_tiny, tmp_path):
    """The class names the synthetic data needs, one with a newline: no traceback, exit 2,
    one line naming the option (the other bad names take the same path in process)."""
    from tests.conftest import cli_env, run_cli

    result = run_cli(["explain", "--model-uri", str(saved_tiny), "--data", "synthetic:4",
                      "--class-names", "OTHER_INFECTION,COVID-19\nNORMAL,NORMAL"],
                     cli_env(tmp_path), tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--class-names" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
