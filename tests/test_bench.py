"""The benchmark runs and reports every contender; its numbers are not asserted (no timed
tests on shared machines), only that they exist and are consistent."""

import json

import pytest

from report.bench import BenchSettings, run_bench


@pytest.mark.slow
def test_bench_times_every_contender_and_writes_json(tracking_store, tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = run_bench(BenchSettings(model_uri="models:/absent@champion", images=8,
                                     batch_size=4, json_path=out))
    assert json.loads(out.read_text()) == result
    speeds = {row["name"]: row["images_per_second"] for row in result["rows"]}
    for name in ("this engine (gradcam, batched)", "model.predict alone",
                 "compiled forward pass alone",
                 "tutorial (per image: predict + new gradient model)"):
        assert speeds[name] > 0, name
    engine = speeds["this engine (gradcam, batched)"]
    tutorial = speeds["tutorial (per image: predict + new gradient model)"]
    assert result["ratios"]["engine_vs_tutorial"] == round(engine / tutorial, 2)
    assert result["memory"]["images"] == 96
    assert result["model"] == "untrained small-cnn"
    assert "engine / tutorial speed" in capsys.readouterr().out


@pytest.mark.slow
def test_end_to_end_bench_runs_every_stage_on_the_same_files(tracking_store, tmp_path,
                                                              monkeypatch, capsys):
    from report import bench_e2e

    monkeypatch.setattr(bench_e2e, "FILMS_ROOT", tmp_path / "films")
    out = tmp_path / "e2e.json"
    result = bench_e2e.run_end_to_end("films:12x64", "models:/absent@champion", 4, 3, out)
    assert json.loads(out.read_text()) == result
    stages = result["stages"]
    assert set(stages) == set(bench_e2e.STAGES)
    assert stages["predict"]["images"] == stages["stream"]["images"] == 12
    assert stages["tutorial"]["images"] == 3
    assert all(s["seconds"] > 0 and s["peak_rss_mb"] > 100 for s in stages.values())
    ratio = stages["stream"]["seconds"] / stages["predict"]["seconds"]
    assert result["ratios"]["stream / (decode + predict)"] == pytest.approx(ratio)
    assert len(list((tmp_path / "films").rglob("*.png"))) == 12
    assert "peak RSS" in capsys.readouterr().out


@pytest.mark.slow
def test_end_to_end_bench_times_the_spark_backend_beside_the_local_pass(
        tracking_store, tmp_path, monkeypatch):
    from report import bench_e2e, spark
    from report.errors import OptionError, UserError

    try:
        spark.check_java()
    except UserError as error:  # make test installs Java (scripts/install-system-deps.sh)
        pytest.skip(str(error))
    monkeypatch.setattr(bench_e2e, "FILMS_ROOT", tmp_path / "films")
    with pytest.raises(OptionError, match="unknown stage 'sprak'"):
        bench_e2e.run_end_to_end("films:12x64", "models:/absent@champion", 4, 3, None,
                                 "local[2]", ["sprak"])
    with pytest.raises(OptionError, match="--spark-master"):
        bench_e2e.run_end_to_end("films:12x64", "models:/absent@champion", 4, 3, None,
                                 None, ["spark"])
    result = bench_e2e.run_end_to_end("films:12x64", "models:/absent@champion", 4, 3, None,
                                      "local[2]", ["stream", "spark"])
    stages = result["stages"]
    assert list(stages) == ["stream", "spark"]
    assert stages["spark"]["images"] == stages["stream"]["images"] == 12
    assert result["ratios"] == {"spark / stream (seconds)": pytest.approx(
        stages["spark"]["seconds"] / stages["stream"]["seconds"])}
