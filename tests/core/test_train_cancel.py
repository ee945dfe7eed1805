"""Stopping WSL training between batches: per-batch progress records, and closing the job."""

from __future__ import annotations

import torch
from test_train import TinyCamModel, quick_config, write_blob_glas

from napari_wsl_al.core.data.glas import load_glas, split_by_patient
from napari_wsl_al.core.progress import run_to_end
from napari_wsl_al.core.wsl.train import seed_everything, train_wsl


class CountingModel(TinyCamModel):
    """The tiny CAM model, counting its training steps."""

    def __init__(self):
        super().__init__()
        self.steps = 0

    def training_step(self, images, labels, epoch):
        self.steps += 1
        return super().training_step(images, labels, epoch)


def small_split(root):
    dataset = load_glas(write_blob_glas(root, count=12, size=32), classes=("plain", "blob"), mpp=None)
    return split_by_patient(dataset, val_fraction=0.25, seed=0)


def test_batch_records_come_between_the_epoch_records(tmp_path):
    split = small_split(tmp_path / "data")
    seed_everything(0)
    model = CountingModel()
    records = []
    result = run_to_end(
        train_wsl(model, split.train, split.val, quick_config(epochs=2, batch_size=3),
                  batch_progress=True),
        records.append,
    )
    batches = [r for r in records if "batch" in r.metrics]
    epochs = [r for r in records if "batch" not in r.metrics]
    per_epoch = batches[0].metrics["batches"]
    assert per_epoch == len(split.train) // 3 and len(batches) == 2 * per_epoch == model.steps
    assert [r.metrics["epoch"] for r in epochs] == [0, 1] and len(result.history) == 2
    assert [r.step for r in batches] == list(range(1, 2 * per_epoch + 1))
    assert {r.total for r in batches} == {2 * per_epoch}
    assert records.index(epochs[0]) == per_epoch  # after the first epoch's batches
    last = batches[per_epoch - 1].metrics
    assert last["train_loss"] == result.history[0]["train_loss"]
    assert set(last) == {"epoch", "batch", "batches", "batch_loss", "train_loss"}


def test_closing_the_job_after_a_batch_stops_training_there(tmp_path):
    split = small_split(tmp_path / "data")
    seed_everything(0)
    model = CountingModel()
    threads = torch.get_num_threads()
    job = train_wsl(model, split.train, split.val, quick_config(epochs=3, batch_size=3),
                    checkpoint_dir=tmp_path / "run", batch_progress=True)
    first, second = next(job), next(job)
    assert (first.metrics["batch"], second.metrics["batch"]) == (1, 2)
    job.close()
    assert model.steps == 2 and model.epochs_ended == []
    assert not (tmp_path / "run" / "best.pt").exists()  # no epoch ended: nothing saved
    assert torch.get_num_threads() == threads  # num_threads=1 was undone


def test_without_batch_progress_there_is_one_record_per_epoch(tmp_path):
    split = small_split(tmp_path / "data")
    seed_everything(0)
    records = []
    run_to_end(train_wsl(TinyCamModel(), split.train, None, quick_config(epochs=2, batch_size=3)),
               records.append)
    assert [r.step for r in records] == [1, 2] and all("batch" not in r.metrics for r in records)
