"""Activation extraction: superalign's flax models against torchvision, same weights and images.

Run by hand: ``python -m benchmarks.extract`` (``--batch``, ``--repeats``, ``--models``). For
ResNet50 (the paper's ``layer2.3.bn2`` and ``layer4.2.bn2``, centre position clamped at 0) and
ViT-B/16 (``encoder_layer_5.mlp`` and ``encoder_layer_11.mlp``, CLS token) it builds a
torchvision model with random weights, loads its state dict with
:func:`superalign.models.from_torchvision`, and times on the same random 224 px images:

- flax: ``jax.jit`` of :func:`superalign.models.extract`, the variables passed as arguments
  (not baked in as constants), NHWC images;
- torchvision: the evaluation-mode forward pass under ``torch.inference_mode()`` with forward
  hooks on the same modules, NCHW images.

After one warm-up call each (flax's includes compilation), the two are timed alternately,
``--repeats`` calls each, and the median is reported as images per second, with the ratio
flax / torch and the largest unit difference relative to the largest unit.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import end, machine, parser

LAYERS = {
    "resnet50": ("layer2.3.bn2", "layer4.2.bn2"),
    "vit_b16": ("encoder_layer_5.mlp", "encoder_layer_11.mlp"),
}


def _torch_case(name):
    """torchvision model in evaluation mode, its hooked modules and the per-output unit read-out."""
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "resnet50":
        model = torchvision.models.resnet50().eval()
        modules = {"layer2.3.bn2": model.layer2[3].bn2, "layer4.2.bn2": model.layer4[2].bn2}

        def units(out):
            return out[:, :, out.shape[2] // 2, out.shape[3] // 2].clamp(min=0)

    else:
        model = torchvision.models.vit_b_16().eval()
        blocks = model.encoder.layers
        modules = {n: getattr(blocks, n.split(".")[0]).mlp for n in LAYERS[name]}

        def units(out):
            return out[:, 0]

    return model, modules, units


def bench(name, batch, repeats):
    import jax
    import torch

    from superalign import models

    model, modules, units = _torch_case(name)
    cfg = models.preset(name, num_classes=1000, image_size=224)
    variables = models.from_torchvision(cfg, model.state_dict())
    layers = LAYERS[name]

    images = np.random.default_rng(0).standard_normal((batch, 224, 224, 3), dtype=np.float32)
    x_jax = jax.device_put(images)
    x_torch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    fn = jax.jit(lambda v, x: models.extract(cfg, v, x, layers))

    def run_flax():
        return jax.block_until_ready(fn(variables, x_jax))

    found = {}
    for n, m in modules.items():
        m.register_forward_hook(lambda _m, _i, out, n=n: found.__setitem__(n, units(out)))

    def run_torch():
        with torch.inference_mode():
            model(x_torch)
        return {n: v.numpy() for n, v in found.items()}

    start = time.perf_counter()
    ours = run_flax()
    t_compile = time.perf_counter() - start
    ref = run_torch()
    diff = max(
        float(np.abs(np.asarray(ours[n]) - ref[n]).max() / np.abs(ref[n]).max()) for n in ref
    )
    t_flax, t_torch = [], []
    for _ in range(repeats):  # alternate, so that both see the same machine load
        start = time.perf_counter()
        run_flax()
        t_flax.append(time.perf_counter() - start)
        start = time.perf_counter()
        run_torch()
        t_torch.append(time.perf_counter() - start)
    flax_ips, torch_ips = batch / np.median(t_flax), batch / np.median(t_torch)
    print(
        f"| {name:8s} | {', '.join(layers):41s} | {batch:5d} | {flax_ips:9.2f} | "
        f"{torch_ips:10.2f} | {flax_ips / torch_ips:11.2f} | {t_compile:10.1f} | {diff:.1e} |",
        flush=True,
    )


def main():
    cli = parser(__doc__)
    cli.add_argument("--batch", type=int, default=32, help="images per call")
    cli.add_argument("--repeats", type=int, default=5, help="timed calls of each (median)")
    cli.add_argument("--models", nargs="+", choices=sorted(LAYERS), default=sorted(LAYERS))
    args = cli.parse_args()
    import torch

    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    print(
        "| model    | layers                                    | batch | flax im/s | torch im/s "
        "| flax/torch  | compile s  | max diff |"
    )
    print("|" + "|".join("-" * w for w in (10, 43, 7, 11, 12, 13, 12, 10)) + "|")
    for name in args.models:
        bench(name, args.batch, args.repeats)
    end()


if __name__ == "__main__":
    main()
