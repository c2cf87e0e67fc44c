"""Models: torchvision's sizes and layer names, extraction equal to plain forward passes."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superalign import models

TINY_RESNET = models.ResNetConfig(
    stage_sizes=(1, 1, 2, 1), width=4, num_classes=5, image_size=16, small_stem=True
)
TINY_VIT = models.ViTConfig(
    patch_size=4, hidden=16, depth=3, heads=2, mlp_dim=24, num_classes=5, image_size=16
)


def _images(n=3, size=16, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, size, size, 3), jnp.float32)


def _captured(config, variables, images):
    """Every submodule's output through flax's own ``capture_intermediates`` (no sow involved)."""

    def run(v, x):
        return models.module(config).apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )[1]["intermediates"]

    return jax.jit(run)(variables, images)


_INIT_OPTIONS = {"xla_backend_optimization_level": 0}


def _init(config, vmapped=False):
    """``models.init`` compiled at XLA's lowest backend optimisation level. Its program (one
    random draw per parameter) runs once, and optimising it took longer than every forward pass of
    these tests together (TINY_RESNET: 10.5 s against 57 s for compilation and run, measured side
    by side on a loaded 2-core CPU); its values differ from the default level's by at most one
    float32 rounding, which none of these tests depends on."""
    fn = partial(models.init, config)
    return jax.jit(jax.vmap(fn) if vmapped else fn, compiler_options=_INIT_OPTIONS)


def _jit(fn, *args):
    # Eager flax compiles every op on its own; one jit is much faster on the CPU.
    return jax.jit(fn)(*args)


def test_paper_models_have_torchvision_sizes_and_layers():
    # torchvision's resnet50() and vit_b_16() have 25,557,032 and 86,567,656 parameters.
    for cfg, expected in ((models.resnet50(), 25_557_032), (models.vit_b16(), 86_567_656)):
        shapes = jax.eval_shape(lambda c=cfg: models.init(c, jax.random.key(0)))
        assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == expected
    r, v = models.resnet50(), models.vit_b16()
    for name, width in (("layer2.3.bn2", 128), ("layer4.2.bn2", 512), ("layer4.2", 2048)):
        assert models.layer_width(r, name) == width
    for name in ("encoder_layer_5.mlp", "encoder_layer_11.mlp", "encoder_layer_11"):
        assert models.layer_width(v, name) == 768


def test_resnet_extraction_equals_the_forward_pass():
    variables = _init(TINY_RESNET)(jax.random.key(1))
    # Non-trivial running statistics, so evaluation mode is really exercised.
    variables["batch_stats"] = jax.jit(  # one compile, not one per shape of statistic
        lambda stats: jax.tree.map(
            lambda a: a + 0.3 * jax.random.uniform(jax.random.key(2), a.shape), stats
        )
    )(variables["batch_stats"])
    x = _images()
    names = ("layer2.0.bn2", "layer3.1.bn2", "layer4.0", "avgpool")
    logits, full = _jit(lambda v, x: models.intermediates(TINY_RESNET, v, x, names), variables, x)
    cap = _captured(TINY_RESNET, variables, x)
    np.testing.assert_array_equal(full["layer2.0.bn2"], cap["layer2_0"]["bn2"]["__call__"][0])
    np.testing.assert_array_equal(full["layer3.1.bn2"], cap["layer3_1"]["bn2"]["__call__"][0])
    np.testing.assert_array_equal(full["layer4.0"], cap["layer4_0"]["__call__"][0])
    np.testing.assert_array_equal(logits, _jit(partial(models.apply, TINY_RESNET), variables, x))
    # The head applied to the recorded last block reproduces the logits.
    fc = variables["params"]["fc"]
    pooled = full["layer4.0"].mean(axis=(1, 2))
    np.testing.assert_allclose(pooled @ fc["kernel"] + fc["bias"], logits, rtol=1e-5, atol=1e-5)
    # extract: the centre position (H // 2, W // 2) clamped at 0.
    units = _jit(lambda v, x: models.extract(TINY_RESNET, v, x, names), variables, x)
    m = np.asarray(full["layer2.0.bn2"])
    h, w = m.shape[1] // 2, m.shape[2] // 2
    np.testing.assert_array_equal(units["layer2.0.bn2"], np.maximum(m[:, h, w, :], 0))
    assert units["layer2.0.bn2"].shape == (3, models.layer_width(TINY_RESNET, "layer2.0.bn2"))
    assert (np.asarray(full["layer2.0.bn2"]) < 0).any()  # the clamp does something
    np.testing.assert_array_equal(units["avgpool"], pooled)


def test_vit_extraction_equals_the_forward_pass():
    variables = _init(TINY_VIT)(jax.random.key(3))
    variables["params"]["head"]["kernel"] = jax.random.normal(jax.random.key(4), (16, 5))
    x = _images(seed=5)
    names = ("encoder_layer_1.mlp", "encoder_layer_2", "encoder_layer_2.mlp", "encoder.ln")
    logits, full = _jit(lambda v, x: models.intermediates(TINY_VIT, v, x, names), variables, x)
    cap = _captured(TINY_VIT, variables, x)
    # The MLP-block output is the second Dense of the block, before the residual addition.
    np.testing.assert_array_equal(
        full["encoder_layer_1.mlp"], cap["encoder_layer_1"]["mlp_3"]["__call__"][0]
    )
    np.testing.assert_array_equal(full["encoder_layer_2"], cap["encoder_layer_2"]["__call__"][0])
    # Final layer norm and head on the CLS token reproduce the logits.
    ln = variables["params"]["encoder_ln"]
    normed = nn.LayerNorm(epsilon=1e-6).apply({"params": ln}, full["encoder_layer_2"])
    np.testing.assert_allclose(normed, full["encoder.ln"], rtol=1e-5, atol=1e-5)
    head = variables["params"]["head"]
    np.testing.assert_allclose(
        normed[:, 0] @ head["kernel"] + head["bias"], logits, rtol=1e-5, atol=1e-5
    )
    units = _jit(lambda v, x: models.extract(TINY_VIT, v, x, names), variables, x)
    np.testing.assert_array_equal(units["encoder_layer_1.mlp"], full["encoder_layer_1.mlp"][:, 0])
    assert units["encoder_layer_2.mlp"].shape == (3, 16)


def test_seeds_as_a_vmap_axis_equal_one_model_at_a_time():
    keys = jax.random.split(jax.random.key(6), 2)
    variables = _init(TINY_VIT, vmapped=True)(keys)
    x = _images(seed=7)
    layer = ("encoder_layer_1.mlp",)
    both = jax.jit(jax.vmap(lambda v: models.extract(TINY_VIT, v, x, layer)[layer[0]]))(variables)
    assert not np.allclose(both[0], both[1])  # the seeds differ
    one_model = jax.jit(lambda v: models.extract(TINY_VIT, v, x, layer))  # compiled once
    for s in range(2):
        one = one_model(jax.tree.map(lambda a, s=s: np.asarray(a)[s], variables))
        np.testing.assert_allclose(both[s], one[layer[0]], rtol=1e-5, atol=1e-6)


def test_bad_input_is_refused_with_the_expected_form():
    variables = jax.eval_shape(partial(models.init, TINY_RESNET), jax.random.key(0))
    with pytest.raises(ValueError, match=r"unknown layer 'layer4.2.bn2'.*valid layers.*layer4.0"):
        models.extract(TINY_RESNET, variables, _images(), ("layer4.2.bn2",))
    with pytest.raises(ValueError, match=r"encoder_layer_0.mlp"):
        models.check_layers(TINY_VIT, ("encoder_layer_7.mlp",))
    with pytest.raises(ValueError, match=r"float32 \[B, 16, 16, 3\].*got shape \(3, 3, 16, 16\)"):
        models.extract(TINY_RESNET, variables, jnp.zeros((3, 3, 16, 16)), ("layer4.0",))
    with pytest.raises(ValueError, match=r"float32 \[B, 16, 16, 3\].*got dtype uint8"):
        models.apply(TINY_RESNET, variables, np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="model must be one of"):
        models.preset("resnet200", num_classes=10, image_size=16)
    with pytest.raises(ValueError, match="image_size=30 must be a multiple of patch_size=4"):
        models.ViTConfig(patch_size=4, image_size=30)
