"""Self-supervised (SimSiam) pre-training of the backbone: loss, crops, training, file, command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import write_blob_glas

from napari_wsl_al.core.data.patches import NO_AUGMENTATION
from napari_wsl_al.core.data.synthetic import synthetic_he_image
from napari_wsl_al.core.errors import CheckpointError, DatasetError
from napari_wsl_al.core.io.memory_backend import ArrayReader
from napari_wsl_al.core.models.backbones import load_backbone_weights, resnet
from napari_wsl_al.core.progress import run_to_end
from napari_wsl_al.core.wsl.ssl import (
    ImageCropSource,
    SlideCropSource,
    SslConfig,
    SslCropDataset,
    embedding_spread,
    load_crop_sources,
    negative_cosine,
    read_ssl_metadata,
    simsiam_loss,
    train_ssl,
)

WIDTH = 0.0625  # ResNet-18 with 4..32 channels: fast on a CPU


def tiny_config(**changes) -> SslConfig:
    # lr 30 for a batch of 256 is 0.94 for these batches of 8: the loss falls within 8 steps
    # (it does for any lr from 20 to 60)
    values = {"epochs": 3, "crops_per_epoch": 16, "batch_size": 8, "crop_size": 48,
              "min_scale": 0.5, "projection_dim": 64, "prediction_dim": 16, "lr": 30.0,
              "device": "cpu", "num_threads": 1, "seed": 0}
    values.update(changes)
    return SslConfig(**values)


@pytest.fixture(scope="module")
def sources():
    return [ImageCropSource(synthetic_he_image((80, 80), label=k % 2, seed=k).image, name=f"s{k}",
                            mpp=1.0) for k in range(4)]


def test_negative_cosine_by_hand_and_no_gradient_into_the_target():
    p = torch.tensor([[1.0, 0.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0]], requires_grad=True)
    loss = negative_cosine(p, z)
    assert float(loss.detach()) == pytest.approx(-1 / math.sqrt(2), abs=1e-6)
    loss.backward()
    # d/dp of -<p/|p|, z/|z|> at p = (1, 0), z/|z| = (1, 1)/sqrt 2: -(zhat - (p.zhat) p) = (0, -1/sqrt 2)
    assert p.grad.tolist()[0] == pytest.approx([0.0, -1 / math.sqrt(2)], abs=1e-6)
    assert z.grad is None  # stop-gradient: the target branch gets nothing
    # two rows: cosines 1/sqrt 2 and -1, averaged and negated
    two = negative_cosine(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, -3.0]]))
    assert float(two) == pytest.approx(-(1 / math.sqrt(2) - 1) / 2, abs=1e-6)
    # symmetric: D(p1, z2) = 0 (orthogonal), D(p2, z1) = -1 (parallel) -> -0.5
    symmetric = simsiam_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]),
                             torch.tensor([[2.0, 2.0]]), torch.tensor([[0.0, 1.0]]))
    assert float(symmetric) == pytest.approx(-0.5, abs=1e-6)


def test_embedding_spread_is_zero_when_collapsed_and_one_for_opposite_rows():
    assert embedding_spread(torch.ones(6, 4)) == pytest.approx(0.0, abs=1e-6)
    # rows +-(1, 0): normalised values +-1 in dim 0 (std of [1, -1] = sqrt 2), 0 in dim 1
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert embedding_spread(z) == pytest.approx(math.sqrt(2) / 2 * math.sqrt(2), abs=1e-6)


def test_windows_are_centred_on_tissue():
    image = np.full((120, 240, 3), 245, np.uint8)  # glass
    block = synthetic_he_image((80, 80), seed=1).image
    image[30:110, 150:230] = block
    source = ImageCropSource(image, mpp=1.0)
    assert source.tissue_pixels == pytest.approx(6400, rel=0.1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        window = source.window(rng, 60)
        assert window.shape == (60, 60, 3)
        # centred on a block pixel: at least a 30 x 30 corner of the window is block
        assert (window.min(axis=2) < 200).mean() > 0.2
    # an image smaller than the window is mirrored at its borders
    small = ImageCropSource(block[:30, :20].copy(), mpp=1.0).window(rng, 48)
    assert small.shape == (48, 48, 3)


def test_slide_windows_at_the_target_resolution():
    level0 = np.full((400, 400, 3), 245, np.uint8)
    level0[:, 200:] = synthetic_he_image((400, 200), seed=3).image
    reader = ArrayReader(level0, mpp=0.5, name="half")
    source = SlideCropSource(reader, target_mpp=1.0)
    # the right half is tissue: 200 x 400 level-0 pixels = 100 x 200 pixels at 1 um/px
    assert source.tissue_pixels == pytest.approx(100 * 200, rel=0.1)
    window = source.window(np.random.default_rng(0), 32)  # 64 level-0 pixels
    assert window.shape == (32, 32, 3)
    assert (window.min(axis=2) < 200).mean() > 0.3
    with pytest.raises(Exception, match="microns per pixel"):
        SlideCropSource(ArrayReader(level0, name="nompp"), target_mpp=1.0)


def test_folder_needs_its_resolution_and_views_are_seeded(tmp_path, sources):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.fromarray(synthetic_he_image((64, 64), seed=5).image).save(folder / "a.png")
    with pytest.raises(DatasetError, match="--mpp"):
        load_crop_sources(folder, target_mpp=1.24)
    loaded = load_crop_sources(folder, target_mpp=1.0, image_mpp=0.5)
    assert loaded[0].image.shape == (32, 32, 3)  # rescaled by 0.5 / 1.0
    data = SslCropDataset(sources, tiny_config())
    first, second = data.views(3)
    assert first.shape == (48, 48, 3) and not np.array_equal(first, second)
    again = data.views(3)
    assert np.array_equal(first, again[0]) and np.array_equal(second, again[1])
    data.set_epoch(1)
    assert not np.array_equal(first, data.views(3)[0])


def test_training_lowers_the_loss_and_the_file_loads_into_a_fresh_backbone(tmp_path, sources):
    torch.manual_seed(0)
    backbone = resnet(18, width=WIDTH)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    config = tiny_config(epochs=4, augment=NO_AUGMENTATION, colour_probability=0.0,
                         grey_probability=0.0, blur_probability=0.0)
    path = tmp_path / "ssl.pt"
    result = run_to_end(train_ssl(backbone, sources, config, checkpoint_path=path))
    losses = [record["loss"] for record in result.history]
    assert len(losses) == 4 and result.steps == 8 and result.stopped == "epochs"
    assert losses[-1] < losses[0] - 0.1
    changed = [k for k, v in backbone.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert "conv1.weight" in changed and "layer4.1.conv2.weight" in changed

    fresh = resnet(18, width=WIDTH)
    report = load_backbone_weights(fresh, path)
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert report.loaded == len(backbone.state_dict())
    for key, value in backbone.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    meta = read_ssl_metadata(path)
    assert meta["width"] == WIDTH and len(meta["history"]) == 4
    assert meta["history"][-1]["loss"] == pytest.approx(losses[-1])
    with pytest.raises(CheckpointError, match="width=0.125") as error:
        load_backbone_weights(resnet(18, width=0.125), path)
    assert str(path) in str(error.value)


def test_closing_the_job_stops_between_batches(sources):
    torch.manual_seed(0)
    backbone = resnet(18, width=WIDTH)
    threads = torch.get_num_threads()
    job = train_ssl(backbone, sources, tiny_config(num_threads=max(1, threads - 1) if threads > 1
                                                   else 2))
    first = next(job)
    after_first = backbone.conv1.weight.detach().clone()
    second = next(job)
    after_second = backbone.conv1.weight.detach().clone()
    assert (first.step, first.metrics["batch"], second.step, second.metrics["batch"]) == (1, 1, 2, 2)
    assert first.total == 3 * 2
    assert not torch.equal(after_first, after_second)  # one step per batch
    job.close()
    assert torch.equal(backbone.conv1.weight, after_second)
    assert torch.get_num_threads() == threads  # restored by the job's cleanup


def test_time_limit_stops_after_the_first_batch(sources):
    backbone = resnet(18, width=WIDTH)
    result = run_to_end(train_ssl(backbone, sources, tiny_config(epochs=50, max_minutes=1e-6)))
    assert result.stopped == "time-limit" and result.steps == 1
    assert len(result.history) == 1 and result.history[0]["batches"] == 1


def test_cli_writes_a_backbone_that_train_wsl_loads(tmp_path, capsys):
    from napari_wsl_al.cli import main

    data = write_blob_glas(tmp_path / "glas", count=8, size=64)
    level0 = np.full((300, 300, 3), 245, np.uint8)
    level0[50:250, 50:250] = synthetic_he_image((200, 200), seed=9).image
    slide = tmp_path / "slide.tif"
    import tifffile

    tifffile.imwrite(slide, level0, photometric="rgb", tile=(128, 128),
                     resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit="INCH")
    out = tmp_path / "ssl" / "backbone.pt"
    code = main(["pretrain-ssl", str(data), "--slides", str(slide), "--out", str(out),
                 "--width", str(WIDTH), "--target-mpp", "1.24", "--crop-size", "48",
                 "--crops-per-epoch", "8", "--batch-size", "4", "--epochs", "2",
                 "--threads", "1", "--device", "cpu", "--quiet"])
    assert code == 0
    log = json.loads(out.with_suffix(".json").read_text())
    assert len(log["history"]) == 2 and log["steps"] == 4
    assert log["sources"][-1] == "slide" and len(log["sources"]) == 9
    assert log["command"].startswith("napari-wsl-al pretrain-ssl ")
    assert load_backbone_weights(resnet(18, width=WIDTH), out).missing_keys == []

    # train-wsl loads it into the model's backbone, every tensor matched
    model_path = tmp_path / "m.pt"
    code = main(["train-wsl", str(data), "--width", str(WIDTH), "--pretrained", str(out),
                 "--epochs", "1", "--batch-size", "4", "--crop-size", "32", "--threads", "1",
                 "--device", "cpu", "--out", str(model_path), "--quiet"])
    assert code == 0
    extra = torch.load(model_path, map_location="cpu", weights_only=True)["extra"]
    assert extra["pretrained"]["source"] == str(out)
    assert "missing_keys=[], unexpected_keys=[]" in extra["pretrained"]["report"]

    # train-wsl refuses the file for another width, naming it
    code = main(["train-wsl", str(data), "--width", "0.125", "--pretrained", str(out),
                 "--epochs", "1", "--out", str(tmp_path / "m2.pt"), "--quiet"])
    assert code == 1
    error = capsys.readouterr().err
    assert str(out) in error and "width=0.125" in error
