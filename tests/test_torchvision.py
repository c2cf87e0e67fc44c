"""from_torchvision: flax forward passes equal torchvision's on the same weights and images.

The torch side of the comparisons (random-weight torchvision models, their checkpoints, and
their logits and hooked units on the test images) runs in a subprocess of the session's
background queue (see conftest.py): building and running the full-size ResNet50 and ViT-B/16 in
torch takes seconds of CPU that the test process would otherwise spend while other tests wait.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superalign import models

ROOT = Path(__file__).resolve().parents[1]

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

# Tolerance: 1e-4 of the largest absolute value of the compared tensor (float32 throughout).
RTOL_OF_MAX = 1e-4


def _close(ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 0  # a non-trivial comparison
    err = np.abs(ours - ref).max()
    assert err <= RTOL_OF_MAX * scale, f"max |diff| {err:.3g} > {RTOL_OF_MAX} * {scale:.3g}"


def _randomised(model, seed, size):
    """``model`` with random weights, perturbed batch-norm affine parameters and non-trivial
    running statistics (train-mode passes on shifted, scaled noise), in evaluation mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))
        model.train()
        for _ in range(3):
            model(1.5 * torch.randn(4, 3, size, size) + 0.2)
    return model.eval()


def _hooked(model, modules, images, units):
    """torchvision's logits and the units of hooked modules, ``{name: [B, C]}``."""
    found = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, n=n: found.__setitem__(n, units(out)))
        for n, m in modules.items()
    ]
    with torch.inference_mode():
        logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    for h in handles:
        h.remove()
    return logits.numpy(), {n: v.numpy() for n, v in found.items()}


def _centre(out):  # [B, C, H, W] -> the centre position clamped at 0
    return out[:, :, out.shape[2] // 2, out.shape[3] // 2].clamp(min=0)


def _flax(cfg, variables, images, layers):
    fn = jax.jit(lambda v, x: (models.apply(cfg, v, x), models.extract(cfg, v, x, layers)))
    with jax.default_matmul_precision("highest"):  # full float32 also on GPUs
        return fn(variables, jnp.asarray(images))


def _images(n, size, seed):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3), dtype=np.float32)


def _resnet50():
    # 100 px: the blocks' stride-2 convolutions see odd sizes (25, 13, 7); resnet18 at 64 px gives
    # them even ones (16, 8, 4), where flax's "SAME" padding would differ from PyTorch's.
    model = _randomised(torchvision.models.resnet50(), 0, 100)
    modules = {"layer2.3.bn2": model.layer2[3].bn2, "layer4.2.bn2": model.layer4[2].bn2}
    return model, modules, _centre


def _resnet18():
    model = _randomised(torchvision.models.resnet18(num_classes=10), 2, 64)
    modules = {
        "layer2.1.bn2": model.layer2[1].bn2,
        "layer3.0.bn1": model.layer3[0].bn1,
        "layer4.1": model.layer4[1],
    }
    return model, modules, _centre


def _vit():
    torch.manual_seed(4)
    model = torchvision.models.vit_b_16()
    with torch.no_grad():  # torchvision zero-initialises biases, the class token and the head
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    blocks = model.encoder.layers
    modules = {n: getattr(blocks, n).mlp for n in ("encoder_layer_5", "encoder_layer_11")}
    return model, {f"{n}.mlp": m for n, m in modules.items()}, lambda out: out[:, 0]


# name -> (torch model builder, flax config, image size, image seed)
CASES = {
    "resnet50": (_resnet50, lambda: models.resnet50(image_size=100), 100, 1),
    "resnet18": (_resnet18, lambda: models.resnet18(num_classes=10, image_size=64), 64, 3),
    "vit": (_vit, models.vit_b16, 224, 5),
}


def torch_side(out: Path) -> None:
    """Every case's torch model saved as ``<out>/<case>/weights.pth``, with its logits and hooked
    units on the case's images in ``refs.npz`` (run in a subprocess of the background queue)."""
    for name, (build, _, size, seed) in CASES.items():
        model, modules, units = build()
        (out / name).mkdir(parents=True)
        torch.save(model.state_dict(), out / name / "weights.pth")
        logits, found = _hooked(model, modules, _images(2, size, seed), units)
        np.savez(
            out / name / "refs.npz", logits=logits, **{f"unit:{n}": v for n, v in found.items()}
        )


def _torch_job(factory):
    out = factory.mktemp("torch_side")
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
        "import test_torchvision as t; t.torch_side(Path(sys.argv[1]))"
    )
    return out, dict(args=[sys.executable, "-c", code, str(out)], cwd=ROOT)


BACKGROUND = {"torch_refs": _torch_job}


@pytest.fixture(scope="module")
def torch_refs(background, tmp_path_factory):
    """The folder of :func:`torch_side`'s outputs."""
    out, _ = background.completed(__name__, "torch_refs", _torch_job, tmp_path_factory)
    return out


def _case(torch_refs, name):
    _, config, size, seed = CASES[name]
    cfg = config()
    path = torch_refs / name / "weights.pth"
    refs = np.load(torch_refs / name / "refs.npz")
    ref_units = {k.removeprefix("unit:"): refs[k] for k in refs.files if k.startswith("unit:")}
    variables = models.from_torchvision(cfg, path)
    logits, ours = _flax(cfg, variables, _images(2, size, seed), tuple(ref_units))
    return {
        "path": path, "variables": variables, "logits": (logits, refs["logits"]),
        "units": {n: (ours[n], ref_units[n]) for n in ref_units},
    }  # fmt: skip


@pytest.fixture(scope="module")
def resnet50_case(torch_refs):
    return _case(torch_refs, "resnet50")


@pytest.fixture(scope="module")
def resnet18_case(torch_refs):
    case = _case(torch_refs, "resnet18")
    case["state"] = torch.load(case["path"], weights_only=True)
    return case


@pytest.fixture(scope="module")
def vit_case(torch_refs):
    return _case(torch_refs, "vit")


@pytest.mark.parametrize("case", ["resnet50_case", "resnet18_case", "vit_case"])
def test_forward_pass_equals_torchvision(case, request, torch_refs):
    case = request.getfixturevalue(case)
    _close(*case["logits"])
    for name, (ours, ref) in case["units"].items():
        _close(ours, ref)
        assert (ref == 0).any() or name.startswith("encoder")  # the clamp at 0 is exercised


def test_presets_expect_torchvision_state_dicts():
    # Every preset expects exactly the names and shapes of the torchvision model (built on the
    # meta device: no memory, no weights).
    names = {
        "resnet34": "resnet34", "resnet101": "resnet101", "resnet152": "resnet152",
        "vit_b32": "vit_b_32", "vit_l16": "vit_l_16",
    }  # fmt: skip
    for ours, theirs in names.items():
        with torch.device("meta"):
            model = getattr(torchvision.models, theirs)()
        expected = {
            k: tuple(v.shape)
            for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
        cfg = models.preset(ours, num_classes=1000, image_size=224)
        assert models.state_dict_shapes(cfg) == expected, ours
    r18 = models.resnet18()
    for name, width in (("layer2.0.bn1", 128), ("layer4.1.bn2", 512), ("avgpool", 512)):
        assert models.layer_width(r18, name) == width
    assert "layer4.1.bn3" not in models.layer_names(r18)


def test_wrapped_and_prefixed_state_dicts_and_safetensors(resnet18_case, tmp_path):
    from safetensors.numpy import save_file

    cfg = models.resnet18(num_classes=10, image_size=64)
    state, expected = resnet18_case["state"], resnet18_case["variables"]

    def same(variables):
        jax.tree.map(np.testing.assert_array_equal, variables, expected)

    # The structure and dtypes of freshly initialised variables.
    fresh = jax.eval_shape(lambda k: models.init(cfg, k), jax.random.key(0))
    assert jax.tree.structure(expected) == jax.tree.structure(fresh)
    assert jax.tree.leaves(jax.tree.map(lambda a: (a.shape, a.dtype), expected)) == (
        jax.tree.leaves(jax.tree.map(lambda a: (a.shape, a.dtype), fresh))
    )

    ddp = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 7, "model_state_dict": ddp, "optimizer": {"lr": 0.1}}, path)
    same(models.from_torchvision(cfg, path))
    for key in ("state_dict", "model", "net"):
        same(models.from_torchvision(cfg, {key: ddp, "epoch": 7}))
    numpy_state = {k: v.numpy() for k, v in state.items()}
    same(models.from_torchvision(cfg, numpy_state))
    save_file(numpy_state, tmp_path / "weights.safetensors")
    same(models.from_torchvision(cfg, tmp_path / "weights.safetensors"))


def test_reference_script_checkpoints_nested_prefixes_and_bfloat16(resnet18_case, tmp_path):
    """What torchvision's reference training script saves (its argparse.Namespace beside the
    model), torch.compile around DataParallel, and bfloat16 safetensors all load."""
    import argparse

    from safetensors.torch import save_file

    cfg = models.resnet18(num_classes=10, image_size=64)
    state, expected = resnet18_case["state"], resnet18_case["variables"]

    def same(variables):
        jax.tree.map(np.testing.assert_array_equal, variables, expected)

    path = tmp_path / "model_89.pth"
    args = argparse.Namespace(model="resnet18", lr=0.5, epochs=90)
    torch.save(
        {"model": state, "optimizer": {}, "lr_scheduler": {}, "epoch": 89, "args": args}, path
    )
    same(models.from_torchvision(cfg, path))
    compiled_ddp = {f"_orig_mod.module.{k}": v for k, v in state.items()}
    same(models.from_torchvision(cfg, compiled_ddp))
    # bfloat16: read as float32, equal to the bfloat16-rounded weights read from a .pth.
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    save_file(bf16, tmp_path / "bf16.safetensors")
    torch.save(bf16, tmp_path / "bf16.pth")
    jax.tree.map(
        np.testing.assert_array_equal,
        models.from_torchvision(cfg, tmp_path / "bf16.safetensors"),
        models.from_torchvision(cfg, tmp_path / "bf16.pth"),
    )


def test_other_architectures_are_refused_naming_key_and_shapes(resnet18_case):
    state = resnet18_case["state"]
    with pytest.raises(
        ValueError,
        match=r"key 'layer1\.0\.conv1\.weight' has shape \(64, 64, 3, 3\), expected "
        r"\(64, 64, 1, 1\).*missing",
    ):
        models.from_torchvision(models.resnet50(), resnet18_case["path"])
    with pytest.raises(ValueError, match=r"key 'fc.weight' has shape \(10, 512\), expected"):
        models.from_torchvision(models.resnet18(), state)
    cfg = models.resnet18(num_classes=10, image_size=64)
    less = {k: v for k, v in state.items() if k != "layer4.1.bn2.running_var"}
    with pytest.raises(ValueError, match=r"missing key 'layer4\.1\.bn2\.running_var' \(expected"):
        models.from_torchvision(cfg, less)
    with pytest.raises(ValueError, match=r"unexpected key 'extra\.weight' \(shape \(3,\)\)"):
        models.from_torchvision(cfg, {**state, "extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"missing key 'class_token'.*unexpected key 'conv1"):
        models.from_torchvision(models.vit_b32(), state)
    bad = {**state, "fc.bias": torch.full((10,), float("nan"))}
    with pytest.raises(ValueError, match=r"key 'fc\.bias' \(shape \(10,\)\) contains NaN"):
        models.from_torchvision(cfg, bad)


def test_unreadable_files_are_refused_naming_the_file(resnet18_case, tmp_path):
    from safetensors.numpy import save_file

    cfg = models.resnet18(num_classes=10, image_size=64)
    data = resnet18_case["path"].read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pth.*not a readable PyTorch checkpoint"):
        models.from_torchvision(cfg, cut)
    save_file({"a": np.zeros(1000, np.float32)}, tmp_path / "w.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "w.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut\.safetensors.*not a readable \.safetensors"):
        models.from_torchvision(cfg, cut)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        models.from_torchvision(cfg, tmp_path / "nothing.pth")
    whole = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Linear(2, 2), whole)  # a pickled module, not a state dict
    with pytest.raises(ValueError, match=r"whole_model\.pth.*state_dict"):
        models.from_torchvision(cfg, whole)
    with pytest.raises(ValueError, match="source must be a path"):
        models.from_torchvision(cfg, 3)
    with pytest.raises(ValueError, match="config must be a ResNetConfig or ViTConfig"):
        models.from_torchvision("resnet18", resnet18_case["path"])


def test_padding_is_pytorchs():
    # Explicit int padding is symmetric also for stride 2 on even sizes, and the max-pool pads
    # with -inf (all-negative inputs would otherwise give 0 at the borders).
    import flax.linen as nn

    for size in (8, 9):
        x = np.random.default_rng(size).standard_normal((1, 3, size, size), dtype=np.float32) - 3
        w = np.random.default_rng(0).standard_normal((4, 3, 3, 3), dtype=np.float32)
        ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, 2, 1)
        conv = nn.Conv(4, (3, 3), (2, 2), padding=1, use_bias=False)
        ours = conv.apply({"params": {"kernel": w.transpose(2, 3, 1, 0)}}, x.transpose(0, 2, 3, 1))
        _close(ours, ref.numpy().transpose(0, 2, 3, 1))
        ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1)
        ours = nn.max_pool(x.transpose(0, 2, 3, 1), (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        np.testing.assert_array_equal(ours, ref.numpy().transpose(0, 2, 3, 1))
