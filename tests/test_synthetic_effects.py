"""Video effects of the synthetic generator: presets, what each effect does, and that labels and
flow are untouched by the pixel-only effects."""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from vss.data.synthetic import _Motion, _Object, _exposed, generate, render_video
from vss.data.video_effects import CLEAN, PRESETS, resolve_effects

from conftest import REPO, load_script
SIZE = (12, 60, 80)  # frames, height, width


def render(seed, **effects):
    return render_video(np.random.default_rng([seed, 0, 0]), *SIZE, resolve_effects("clean", **effects))


def test_presets_and_overrides():
    assert resolve_effects() == resolve_effects("clean") == CLEAN
    fx = resolve_effects("effects", noise=3, jpeg_quality=50)
    assert fx == {**PRESETS["effects"], "noise": 3.0, "jpeg_quality": 50}
    assert resolve_effects({"motion_blur": 0.5}) == {**CLEAN, "motion_blur": 0.5}
    # None means "keep the preset's value" (the command line's unset options).
    assert resolve_effects("effects", noise=None) == PRESETS["effects"]


def test_bad_effects_name_the_key_and_range():
    with pytest.raises(ValueError, match=r"unknown preset 'rainy'; choose one of \['clean', 'effects', 'vspw'\]"):
        resolve_effects("rainy")
    with pytest.raises(ValueError, match=r"unknown effect\(s\) \['blur'\]"):
        resolve_effects("clean", blur=1)
    with pytest.raises(ValueError, match=r"motion_blur must be a number in \[0.0, 1.0\], got 2"):
        resolve_effects("clean", motion_blur=2)
    with pytest.raises(ValueError, match=r"jpeg_quality must be an integer in \[1, 92\], got 20.5"):
        resolve_effects("clean", jpeg_quality=20.5)
    with pytest.raises(ValueError, match=r"speed must be a number in \[0.1, 10.0\], got 'fast'"):
        generate("/nonexistent/never/written", effects={"speed": "fast"})


def test_pixel_effects_leave_scene_labels_and_motion_alone():
    clean = render(5)
    fx = render(5, motion_blur=1.0, noise=10.0, flicker=0.3, jpeg_quality=20)
    for key in ("labels", "layers", "positions", "pan", "canvas_labels"):
        np.testing.assert_array_equal(fx[key], clean[key], err_msg=key)
    assert fx["layer_classes"] == clean["layer_classes"]
    assert np.abs(fx["images"].astype(float) - clean["images"]).mean() > 3


def test_each_effect_draws_independently_of_the_others():
    # Adding noise keeps every other draw: blur, flicker and JPEG quality are unchanged.
    a = render(6, motion_blur=1.0, flicker=0.3, jpeg_quality=20)
    b = render(6, motion_blur=1.0, flicker=0.3, jpeg_quality=20, noise=10.0)
    np.testing.assert_array_equal(a["quality"], b["quality"])
    residual = a["images"].astype(float) - b["images"]
    assert 1 < residual.std() < 15 and abs(residual.mean()) < 0.5
    # Adding occluders keeps the blur, flicker and noise of the frames they do not reach.
    c = render(6, motion_blur=1.0, flicker=0.3, jpeg_quality=20, noise=10.0, occlusions=1.0)
    np.testing.assert_array_equal(c["quality"], b["quality"])
    untouched = [t for t in range(SIZE[0]) if (c["layers"][t] == b["layers"][t]).all()
                 and np.array_equal(c["layers"][max(t - 1, 0):t + 2], b["layers"][max(t - 1, 0):t + 2])]
    assert len(c["layer_classes"]) > len(b["layer_classes"]) and untouched
    np.testing.assert_array_equal(c["images"][untouched], b["images"][untouched])


def test_motion_blur_spreads_along_the_motion():
    # A canvas with a vertical and a horizontal bright line, panning 4 px per frame to the right.
    canvas = np.zeros((20, 60, 3), np.float32)
    canvas[:, 30] = 255
    canvas[10, :] = 255
    positions = np.array([[[0, 0], [-4, 0], [-8, 0]]])
    image = _exposed(canvas, np.zeros((20, 60), np.uint8), positions, [], 1, 1.0, [0], 20, 40)
    # Exposure from t = 0.5 to 1.5: the vertical line at x = 30 - pan, pan 2..6, five samples.
    row = image[5, :, 0]
    np.testing.assert_allclose(row[24:29], 255 / 5, rtol=1e-6)
    assert not row[:24].any() and not row[29:].any()
    # The horizontal line moves along itself: still sharp.
    np.testing.assert_allclose(image[10, :, 0], 255)
    assert not image[9, :23].any() and not image[11, 29:].any()
    # No exposure: the frame itself.
    sharp = _exposed(canvas, np.zeros((20, 60), np.uint8), positions, [], 1, 0.0, [0], 20, 40)
    np.testing.assert_array_equal(sharp[5, :, 0], np.where(np.arange(40) == 26, 255, 0))


def test_flicker_noise_and_compression():
    clean = render(7)
    brightness = lambda out: out["images"].reshape(SIZE[0], -1).mean(1)  # noqa: E731
    ratio = brightness(render(7, flicker=0.3)) / brightness(clean)
    assert ratio.std() > 0.05 and np.abs(ratio - 1).max() < 0.3 * 1.5
    residual = render(7, noise=10.0)["images"].astype(float) - clean["images"]
    assert 2 < residual.std() < 15 and abs(residual.mean()) < 0.5
    assert (clean["quality"] == 92).all()
    quality = render(7, jpeg_quality=20)["quality"]
    assert ((quality >= 20) & (quality <= 92)).all() and len(set(quality.tolist())) > 1


def test_speed_and_turns():
    clean, fast = render(8), render(8, speed=3.0)
    step = lambda out: np.abs(np.diff(out["pan"], axis=0)).sum(1).mean()  # noqa: E731
    assert 2.5 < step(fast) / step(clean) < 3.5
    turning = render_video(np.random.default_rng(9), 40, 60, 80, resolve_effects("clean", turns=2.0))
    objects = turning["positions"][1:]
    velocity = np.diff(objects, axis=1)
    # Objects change direction away from the borders too, and stay in view (they bounce).
    turned = (np.sign(velocity[:, 1:, 0]) != np.sign(velocity[:, :-1, 0])).sum(1)
    assert (turned >= 2).mean() > 0.5
    visible = np.stack([[(layers == i).any() for layers in turning["layers"]]
                        for i in range(1, len(objects) + 1)])
    assert visible.mean() > 0.9


def test_occluders_are_objects_in_labels_and_layers():
    out = render(0, occlusions=10.0)
    classes = out["layer_classes"]
    # Moving objects are never walls: the wall layers are the occluders, after the objects.
    assert {"wall", "person"} <= set(classes) and len(classes) > 8
    raw = {"wall": 4, "person": 6}
    for index, name in enumerate(classes):
        if name in raw:
            shown = out["layers"] == index
            assert (out["labels"][shown] == raw[name]).all()
    # A pillar wider than the frame hides the whole view for a moment: one label, one layer.
    full = [t for t in range(SIZE[0]) if (out["layers"][t] == out["layers"][t].flat[0]).all()]
    assert full and all(classes[out["layers"][t].flat[0]] == "wall" for t in full)


def test_effects_set_registered_and_written_by_the_cli(tmp_path, monkeypatch, capsys):
    for split in ("train", "val"):
        assert f"synthetic_vss_fx_{split}" in DatasetCatalog.list()
        assert MetadataCatalog.get(f"synthetic_vss_fx_{split}").dataset_root.endswith("synthetic_vss_fx")
    script = REPO / "datasets" / "prepare_synthetic.py"
    cli = load_script(script)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    args = ["--train-videos", "1", "--val-videos", "1", "--frames", "3", "--height", "40", "--width", "48"]
    cli.main(args + ["--effects", "effects", "--noise", "3", "--flow-files"])
    assert "wrote 6 frames" in capsys.readouterr().out
    with open(tmp_path / "synthetic_vss_fx" / "spec.json") as f:
        written = json.load(f)
    assert written["effects"] == {**PRESETS["effects"], "noise": 3.0} and written["flow_files"]
    assert os.path.isfile(tmp_path / "synthetic_vss_fx" / "data" / "val_0000" / "flow" / "00000002.flo")
    cli.main(args + ["--effects", "effects", "--noise", "3", "--flow-files"])
    assert "nothing to do" in capsys.readouterr().out
    cli.main(args)  # clean: its own folder
    assert (tmp_path / "synthetic_vss" / "spec.json").is_file()
    cli.main(args + ["--effects", "vspw"])  # the calibrated preset as it is: its registered folder
    with open(tmp_path / "synthetic_vss_vspw" / "spec.json") as f:
        assert json.load(f)["effects"] == PRESETS["vspw"]
    assert MetadataCatalog.get("synthetic_vss_vspw_val").dataset_root.endswith("synthetic_vss_vspw")
    cli.main(args + ["--effects", "vspw", "--noise", "3", "--overwrite"])  # changed: any other effects
    with open(tmp_path / "synthetic_vss_fx" / "spec.json") as f:
        assert json.load(f)["effects"] == {**PRESETS["vspw"], "noise": 3.0}
    with pytest.raises(SystemExit, match=r"synthetic effects: motion_blur must be a number"):
        cli.main(args + ["--motion-blur", "3"])


def test_an_older_generation_is_replaced(tmp_path):
    root = tmp_path / "old"
    generate(str(root), train_videos=1, val_videos=1, frames=2, height=32, width=32)
    spec = json.loads((root / "spec.json").read_text())
    (root / "spec.json").write_text(json.dumps({**spec, "version": 1}))
    (root / "data" / "val_0000" / "motion.json").unlink()
    summary = generate(str(root), train_videos=1, val_videos=1, frames=2, height=32, width=32)
    assert summary["generated"] and (root / "data" / "val_0000" / "motion.json").is_file()


def test_haze_veils_patches_that_move_every_frame():
    clean, hazy = render(10), render(10, haze=1.0)
    for key in ("labels", "layers", "positions"):
        np.testing.assert_array_equal(hazy[key], clean[key], err_msg=key)
    veiled = np.abs(hazy["images"].astype(float) - clean["images"]).mean(-1) > 40
    # patches, not the whole frame, and other patches in every frame
    assert 0.05 < veiled.mean() < 0.5
    overlap = (veiled[1:] & veiled[:-1]).sum() / veiled[1:].sum()
    assert overlap < 0.6
    # where fully veiled, every class looks alike: the veil's gray
    fully = np.abs(hazy["images"].astype(float) - 150).max(-1) < 60
    labels = clean["labels"][fully & veiled]
    assert len(np.unique(labels)) >= 4
    assert abs(hazy["images"][fully & veiled].mean() - 150) < 10


def test_object_size_and_flap_change_the_objects_only():
    base, big = render(11), render(11, object_size=2.0)
    np.testing.assert_array_equal(big["pan"], base["pan"])
    objects = lambda out: (out["layers"] > 0).mean()  # noqa: E731
    assert 2.5 < objects(big) / objects(base) < 4.5
    # sizes do not change speeds (bigger objects only bounce earlier)
    step = lambda out: np.abs(np.diff(out["positions"][1:, :, 0], axis=1)).mean()  # noqa: E731
    assert abs(step(big) / step(base) - 1) < 0.25
    # slower wing beats: a bird's shape changes less from frame to frame
    def shape_change(flap):
        bird = _Object(np.random.default_rng(12), "bird", 20, 120, 160, _Motion(1.0, 0.0, None, flap))
        masks = np.stack([bird.mask(t) for t in range(20)])
        return (masks[1:] != masks[:-1]).mean()

    assert 0 < shape_change(0.1) < shape_change(1.0) / 4
    with pytest.raises(ValueError, match=r"object_size must be a number in \[0.25, 2.5\], got 3"):
        resolve_effects("clean", object_size=3)


def test_an_older_generation_of_another_set_is_not_replaced_silently(tmp_path):
    """Models trained on an old set must not end up beside new data they were not trained on."""
    root = tmp_path / "old"
    generate(str(root), train_videos=1, val_videos=1, frames=2, height=32, width=32)
    spec = json.loads((root / "spec.json").read_text())
    old_effects = {k: v for k, v in spec["effects"].items() if k not in ("object_size", "flap", "haze")}
    (root / "spec.json").write_text(json.dumps({**spec, "version": 2, "effects": old_effects}))
    with pytest.raises(FileExistsError, match=r"different spec \(effects: .*pass overwrite=True"):
        generate(str(root), train_videos=1, val_videos=1, frames=2, height=32, width=32, effects="vspw")
    # the same set as before, from the older generator: replaced
    assert generate(str(root), train_videos=1, val_videos=1, frames=2, height=32, width=32)["generated"]
