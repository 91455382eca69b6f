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
