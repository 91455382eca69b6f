import csv

import numpy as np

from report.artifacts import ArtifactWriter


def test_writer_streams_overlays_maps_and_rows(tmp_path):
    classes = ("A", "B")
    with ArtifactWriter(tmp_path, classes, "backbone/conv", (8, 8)) as writer:
        for i in range(3):
            writer.add_prediction(f"img{i}", f"/data/img{i}.png", i % 2,
                                  np.array([0.25, 0.75]), 1, np.full((2, 2), i, np.float32))
            writer.add_overlay(f"img{i}", i % 2, b"png-bytes")
        writer.add_skipped("bad", "/data/bad.png", 0, "empty file")
    cams = np.load(tmp_path / "cams" / "cams.npz")
    assert str(cams["_layer"]) == "backbone/conv"
    assert cams["_image_size"].tolist() == [8, 8]
    assert cams["img2"].dtype == np.float32 and cams["img2"][0, 0] == 2
    assert (tmp_path / "overlays" / "A" / "img0.png").read_bytes() == b"png-bytes"
    assert (tmp_path / "overlays" / "B" / "img1.png").is_file()
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open(encoding="utf-8")))
    assert [r["correct"] for r in rows] == ["false", "true", "false", ""]
    assert rows[0]["flags"] == "misclassified" and rows[1]["flags"] == ""
    assert rows[3]["flags"] == "unreadable: empty file" and rows[3]["predicted_label"] == ""
    assert rows[1]["prob_B"] == "0.750000"


def test_cam_maps_read_one_archive_or_its_shards_alike(tmp_path):
    from report.artifacts import CamMaps

    maps = {f"img{i}": np.full((3, 3), i, np.float32) for i in range(5)}
    whole, shards = tmp_path / "whole" / "cams", tmp_path / "shards" / "cams"
    whole.mkdir(parents=True)
    shards.mkdir(parents=True)
    np.savez(whole / "cams.npz", _layer=np.array("conv"), **maps)
    np.savez(shards / "part-00000.npz", _layer=np.array("conv"),
             **{k: maps[k] for k in ("img0", "img1")})
    np.savez(shards / "part-00001.npz", _layer=np.array("conv"),
             **{k: maps[k] for k in ("img2", "img3", "img4")})
    for folder in (whole, shards):
        with CamMaps(folder) as read:
            assert sorted(read) == sorted(maps) and read.layer == "conv"
            for key, value in maps.items():
                np.testing.assert_array_equal(read[key], value)
