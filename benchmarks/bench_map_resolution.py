"""How finely do the maps resolve colon glands? Gland Dice of the foreground map at several
map resolutions, on GlaS images with their true masks.

For each image the model runs on the whole image (at the model's resolution). Its foreground,
which Max-Min makes at the input resolution by bilinear upsampling of stride-32 CAMs, is then
stored as the map would be: averaged over blocks of ``map stride`` pixels. The map is compared
to the gland mask (threshold 0.5) at the image's resolution. Variants:

- ``os32 map32``: today's maps, one value per 32-pixel block of the model's output stride;
- ``os32 map8``: the same model, the upsampled foreground kept at one value per 8 pixels;
- ``os16 map8`` / ``os8 map8``: the same weights run with dilated last stages (output stride 16
  or 8, torchvision's ``replace_stride_with_dilation``), maps at 8 pixels.

Map pixels across 50 µm (a small gland) are printed for each. The shipped model saw these
images in training: the figures compare resolutions, they do not measure generalisation.

    python benchmarks/bench_map_resolution.py [--images 85] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPOSITORY = Path(__file__).resolve().parents[1]
VARIANTS = (("os32 map32", 32, 32), ("os32 map8", 32, 8), ("os16 map8", 16, 8),
            ("os8 map8", 8, 8))


def _models():
    from napari_wsl_al.core.models.checkpoint import default_checkpoint_path, load_checkpoint
    from napari_wsl_al.core.models.factory import build_model

    base, config, _ = load_checkpoint(default_checkpoint_path(), device="cpu")
    models = {}
    for stride in sorted({s for _, s, _ in VARIANTS}):
        if stride == config.output_stride:
            models[stride] = base
            continue
        data = config.to_dict()
        data["output_stride"] = stride
        model = build_model(type(config).from_dict(data))
        model.load_state_dict(base.state_dict())
        models[stride] = model.eval()
    return models


def _fg(model, image: np.ndarray) -> torch.Tensor:
    """Foreground in [0, 1] at the input size, the model run on the whole image."""
    h, w = image.shape[:2]
    stride = 32
    ph, pw = (-h) % stride, (-w) % stride
    x = model.normalize(torch.from_numpy(np.ascontiguousarray(image).copy())[None])
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    with torch.inference_mode():
        output = model(x)
        fg = model.localize(output, tuple(x.shape[-2:]))
    return fg[0, 0, :h, :w].clamp(0, 1)


def _as_map(fg: torch.Tensor, map_stride: int) -> np.ndarray:
    """``fg`` averaged over ``map_stride`` blocks, shown back at the image size (nearest)."""
    h, w = fg.shape
    pooled = F.avg_pool2d(fg[None, None], map_stride, ceil_mode=True)
    return F.interpolate(pooled, scale_factor=map_stride, mode="nearest")[0, 0, :h, :w].numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data" / "glas_train"))
    parser.add_argument("--images", type=int, default=85)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPOSITORY / "benchmarks" / "results" /
                                             "map_resolution.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_wsl_al.core.data.glas import load_glas
    from napari_wsl_al.core.io.image_backend import read_image_file
    from napari_wsl_al.core.metrics import dice

    dataset = load_glas(args.data)
    models = _models()
    mpp = float(models[32].mpp or 0.62)
    records = list(dataset)[: args.images]
    scores = {name: [] for name, _, _ in VARIANTS}
    seconds = {stride: 0.0 for stride in models}
    for record in records:
        image = read_image_file(record.image_path)
        mask = read_image_file(record.mask_path) if record.mask_path else None
        gt = (mask[..., 0] if mask.ndim == 3 else mask) > 0
        fgs = {}
        for stride, model in models.items():
            started = time.perf_counter()
            fgs[stride] = _fg(model, image)
            seconds[stride] += time.perf_counter() - started
        for name, stride, map_stride in VARIANTS:
            scores[name].append(dice(gt, _as_map(fgs[stride], map_stride) >= 0.5))
    print(f"{len(records)} GlaS images, {mpp} um/px, model run on each whole image")
    print(f"{'variant':<12} {'map px':>7} {'px/50um':>8} {'gland Dice':>18} {'s/image':>8}")
    result = {"images": len(records), "mpp": mpp, "variants": {}}
    for name, stride, map_stride in VARIANTS:
        values = np.array(scores[name])
        per_image = seconds[stride] / len(records)
        across = 50.0 / (map_stride * mpp)
        print(f"{name:<12} {map_stride * mpp:6.1f}um {across:8.1f} "
              f"{100 * values.mean():8.1f} +- {100 * values.std():5.1f} {per_image:8.2f}")
        result["variants"][name] = {"output_stride": stride, "map_stride": map_stride,
                                    "map_pixels_per_50um": across,
                                    "dice_mean": float(values.mean()),
                                    "dice_sd": float(values.std()),
                                    "seconds_per_image": per_image}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
