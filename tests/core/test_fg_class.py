"""A CAM model's foreground can be one class's map on every image (``fg_class``)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from infer_models import gradient_image
from test_train import write_blob_glas

from napari_wsl_al.core.infer import InferenceConfig, MapStore, infer_slide
from napari_wsl_al.core.io.memory_backend import ArrayReader
from napari_wsl_al.core.models.factory import CAM_ARCHITECTURES, ModelConfig, build_model
from napari_wsl_al.core.progress import run_to_end

CAMS = torch.tensor([  # two images, two classes, 2 x 2 maps
    [[[0.0, 1.0], [2.0, 3.0]], [[8.0, 6.0], [4.0, 0.0]]],
    [[[5.0, 5.0], [1.0, 3.0]], [[2.0, 4.0], [6.0, 10.0]]],
])
# image 0 is predicted class 0, image 1 class 1
LOGITS = torch.tensor([[2.0, 1.0], [0.0, 3.0]])


def tiny(arch="wildcat", fg_class=None):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, classes=("benign", "malignant"), width=0.0625,
                                   fg_class=fg_class)).eval()


def test_the_foreground_is_the_predicted_class_map_by_default_and_fg_class_s_map_when_set():
    output = {"cams": CAMS, "logits": LOGITS}
    plain = tiny().localize(output, (2, 2))[:, 0]
    # min-max per image of the predicted class's map: image 0 class 0, image 1 class 1
    np.testing.assert_allclose(plain[0], [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)
    np.testing.assert_allclose(plain[1], [[0, 2 / 8], [4 / 8, 1]], atol=1e-6)
    malignant = tiny(fg_class="malignant").localize(output, (2, 2))[:, 0]
    np.testing.assert_allclose(malignant[0], [[1, 6 / 8], [4 / 8, 0]], atol=1e-6)
    np.testing.assert_allclose(malignant[1], plain[1], atol=1e-6)  # predicted malignant anyway
    benign = tiny(fg_class="benign").localize(output, (2, 2))[:, 0]
    np.testing.assert_allclose(benign[0], plain[0], atol=1e-6)
    np.testing.assert_allclose(benign[1], [[1, 1], [0, 0.5]], atol=1e-6)


def test_a_calibrated_range_scales_fg_class_s_map():
    model = tiny(fg_class="malignant")
    model.fg_range = (2.0, 6.0)
    located = model.localize({"cams": CAMS, "logits": LOGITS}, (2, 2))[:, 0]
    np.testing.assert_allclose(located[0], [[1, 1], [0.5, 0]], atol=1e-6)
    np.testing.assert_allclose(located[1], [[0, 0.5], [1, 1]], atol=1e-6)


def test_raw_mask_is_fg_class_s_map_whatever_the_prediction():
    model = tiny(fg_class="benign")
    x = torch.from_numpy(gradient_image(64, 64)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        cams, _, mask = model.raw_mask(x)
        expected = torch.nn.functional.interpolate(cams[:, :1], size=(64, 64), mode="bilinear",
                                                   align_corners=False)
    torch.testing.assert_close(mask, expected)


def test_the_configuration_keeps_fg_class_and_reads_configurations_without_it():
    config = ModelConfig(arch="wildcat", classes=("benign", "malignant"), fg_class="malignant")
    data = config.to_dict()
    assert data["fg_class"] == "malignant"
    assert ModelConfig.from_dict(data) == config
    plain = ModelConfig(arch="wildcat", classes=("benign", "malignant"))
    assert "fg_class" not in plain.to_dict()  # older versions read it
    assert ModelConfig.from_dict(plain.to_dict()).fg_class is None


@pytest.mark.parametrize("arch", ["maxmin", "minmax-entropy", "joint"])
def test_fg_class_is_refused_for_models_with_their_own_foreground(arch):
    with pytest.raises(ValueError, match="own foreground map"):
        ModelConfig(arch=arch, classes=("benign", "malignant"), fg_class="malignant")


def test_an_unknown_fg_class_is_refused_naming_the_classes():
    with pytest.raises(ValueError, match=r"'tumour' is not one of the classes \['benign', 'malignant'\]"):
        ModelConfig(arch="wildcat", classes=("benign", "malignant"), fg_class="tumour")


def test_every_cam_architecture_takes_fg_class():
    for arch in CAM_ARCHITECTURES:
        model = tiny(arch, fg_class="malignant")
        assert model.fg_index == 1 and model.config.fg_class == "malignant"
    assert tiny().fg_index is None


def test_a_slide_s_range_is_measured_on_fg_class_s_map(tmp_path):
    reader = ArrayReader(gradient_image(128, 128), mpp=0.5)
    config = InferenceConfig(tile_size=64, overlap=0, batch_size=4, device="cpu", readers=1,
                             tissue_threshold=0, tissue_gate=False, maps=("fg",))
    ranges = {}
    for fg_class in ("benign", "malignant"):
        model = tiny(fg_class=fg_class)
        run_to_end(infer_slide(reader, model, config, MapStore(tmp_path / f"{fg_class}.zarr")))
        ranges[fg_class] = MapStore(tmp_path / f"{fg_class}.zarr").read_info()["spec"]["fg_range"]
        with torch.inference_mode():
            tile = model.normalize(torch.from_numpy(reader.read_level(0, 0, 0, 64, 64))[None])
            raw = model.raw_mask(tile)[2]
        index = ("benign", "malignant").index(fg_class)
        with torch.inference_mode():
            cams = model(tile)["cams"][:, index : index + 1]
            expected = torch.nn.functional.interpolate(cams, size=(64, 64), mode="bilinear",
                                                       align_corners=False)
        torch.testing.assert_close(raw, expected)
    assert ranges["benign"] != ranges["malignant"]


def test_train_wsl_fg_class_is_kept_in_the_checkpoint(tmp_path, capsys):
    from napari_wsl_al.cli import main
    from napari_wsl_al.core.models.checkpoint import load_checkpoint

    data = write_blob_glas(tmp_path / "glas", count=8, size=64)
    out = tmp_path / "model.pt"
    code = main([
        "train-wsl", str(data), "--arch", "wildcat", "--width", "0.0625", "--epochs", "1",
        "--batch-size", "4", "--crop-size", "64", "--device", "cpu", "--val-fraction", "0",
        "--select", "last", "--out", str(out), "--threads", "1", "--quiet", "--no-reinhard",
        "--fg-class", "blob", "--card", str(tmp_path / "card.json"),
    ])
    assert code == 0
    model, config, extra = load_checkpoint(out)
    assert config.fg_class == "blob" and model.fg_index == 0
    assert "--fg-class blob" in extra["command"]
    assert json.loads((tmp_path / "card.json").read_text())["model"]["fg_class"] == "blob"


@pytest.mark.parametrize("arguments, message", [
    (["--arch", "wildcat", "--fg-class", "tumour"],
     "--fg-class 'tumour' is not one of the data set's classes (blob, plain)"),
    (["--arch", "maxmin", "--fg-class", "blob"], "a maxmin model has its own foreground map"),
])
def test_train_wsl_refuses_a_wrong_fg_class_before_training(tmp_path, arguments, message):
    from napari_wsl_al.cli import main

    data = write_blob_glas(tmp_path / "glas", count=8, size=64)
    out = tmp_path / "model.pt"
    with pytest.raises(SystemExit) as error:
        main(["train-wsl", str(data), "--width", "0.0625", "--epochs", "1", "--device", "cpu",
              "--crop-size", "64", "--out", str(out), "--quiet", *arguments])
    assert message in str(error.value)
    assert not out.exists()


def test_maps_of_the_same_weights_with_another_foreground_are_not_reused(tmp_path):
    from napari_wsl_al.core.infer.engine import model_fingerprint

    plain, malignant = tiny(), tiny(fg_class="malignant")
    malignant.load_state_dict(plain.state_dict())
    assert model_fingerprint(plain) != model_fingerprint(malignant)
    assert model_fingerprint(plain) == model_fingerprint(tiny())
    reader = ArrayReader(gradient_image(128, 128), mpp=0.5)
    config = InferenceConfig(tile_size=64, overlap=0, batch_size=4, device="cpu", readers=1,
                             tissue_threshold=0, tissue_gate=False, maps=("fg",))
    run_to_end(infer_slide(reader, plain, config, MapStore(tmp_path / "s.zarr")))
    again = run_to_end(infer_slide(reader, malignant, config, MapStore(tmp_path / "s.zarr")))
    fresh = run_to_end(infer_slide(reader, malignant, config, MapStore(tmp_path / "f.zarr")))
    np.testing.assert_allclose(again.maps["fg"].levels[0].compute(),
                               fresh.maps["fg"].levels[0].compute(), atol=1e-6)
    assert (MapStore(tmp_path / "s.zarr").read_info()["spec"]["fg_range"]
            == MapStore(tmp_path / "f.zarr").read_info()["spec"]["fg_range"])


def test_a_cam_model_built_directly_refuses_an_unknown_fg_class():
    from napari_wsl_al.core.models.cam_models import CamModel

    model = tiny()
    with pytest.raises(ValueError, match=r"fg_class 'x' is not one of the classes \['benign', 'malignant'\]"):
        CamModel(model.backbone, model.pooling, model.classes, fg_class="x")
    assert CamModel(model.backbone, model.pooling, model.classes, fg_class="benign").fg_index == 0


def test_infer_fg_class_shows_that_class_s_map_without_retraining(tmp_path, capsys):
    import pickle

    import tifffile

    from napari_wsl_al.cli import main
    from napari_wsl_al.core.infer.loading import load_with_foreground_class
    from napari_wsl_al.core.models.checkpoint import save_checkpoint

    config = ModelConfig(arch="cam-avg", classes=("benign", "malignant"), width=0.0625)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "plain.pt", build_model(config), config)
    slide = tmp_path / "s.tif"
    tifffile.imwrite(slide, gradient_image(128, 128), tile=(64, 64), photometric="rgb")

    def infer(project, *more):
        return main(["infer", str(slide), "--model", str(checkpoint), "--project",
                     str(tmp_path / project), "--level", "0", "--tile-size", "64", "--overlap",
                     "0", "--maps", "fg", "--device", "cpu", "--tissue-threshold", "0", *more])

    def fg(project):
        return MapStore(tmp_path / project / "maps" / "s.zarr").handles()["fg"].levels[0].compute()

    assert infer("plain.wslal") == 0
    assert infer("benign.wslal", "--fg-class", "benign") == 0
    assert infer("malignant.wslal", "--fg-class", "malignant") == 0
    assert infer("predicted.wslal", "--fg-class", "predicted") == 0
    # the same weights, each run's foreground that of a model configured with that class
    reader = ArrayReader(gradient_image(128, 128), mpp=None)
    run = InferenceConfig(tile_size=64, overlap=0, batch_size=8, device="cpu", readers=1,
                          tissue_threshold=0, maps=("fg",), level=0)
    for fg_class in ("benign", "malignant"):
        model = load_with_foreground_class(checkpoint, fg_class, "cpu")
        assert model.fg_index == ("benign", "malignant").index(fg_class)
        assert model.config.fg_class == fg_class
        expected = run_to_end(infer_slide(reader, model, run, MapStore(tmp_path / f"{fg_class}.zarr")))
        np.testing.assert_allclose(fg(f"{fg_class}.wslal"),
                                   expected.maps["fg"].levels[0].compute(), atol=1e-5)
    np.testing.assert_allclose(fg("predicted.wslal"), fg("plain.wslal"), atol=1e-6)
    assert not np.allclose(fg("benign.wslal"), fg("malignant.wslal"))
    # a checkpoint's own class is cleared by "predicted"; the choice travels to workers
    shipped = load_with_foreground_class(checkpoint, "malignant", "cpu")
    assert set_back(shipped).fg_index is None and shipped.config.fg_class is None
    assert pickle.loads(pickle.dumps(functools.partial(
        load_with_foreground_class, checkpoint, "benign")))().fg_index == 0


def set_back(model):
    from napari_wsl_al.core.infer.loading import set_foreground_class

    return set_foreground_class(model, "predicted")


@pytest.mark.parametrize("arch, fg_class, message", [
    ("cam-avg", "tumour",
     "--fg-class 'tumour' is not one of the model's classes (benign, malignant) nor 'predicted'"),
    ("maxmin", "benign", "a MaxMinModel model shows its own foreground mask"),
])
def test_infer_refuses_a_wrong_fg_class_before_reading_a_slide(tmp_path, arch, fg_class, message):
    from napari_wsl_al.cli import main
    from napari_wsl_al.core.models.checkpoint import save_checkpoint

    config = ModelConfig(arch=arch, classes=("benign", "malignant"), width=0.0625)
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    with pytest.raises(SystemExit) as error:
        main(["infer", str(tmp_path / "missing.tif"), "--model", str(checkpoint), "--project",
              str(tmp_path / "p.wslal"), "--fg-class", fg_class, "--device", "cpu"])
    assert message in str(error.value)
    assert not (tmp_path / "p.wslal").exists()
