"""Paper transforms: crop sizes and parameters per preset, and each trunk's input values."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dmlbench.bench.errors import UserError
from dmlbench.bench.models.transforms import input_normalization, make_transforms


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _steps(tr) -> list:
    return list(tr.transforms)


def test_bninception_input_is_bgr_0_255_minus_caffe_mean_exactly():
    # a 2x2 image: each pixel's (R, G, B) known; the transform's last step alone
    px = np.array([[[10, 20, 30], [255, 0, 128]], [[0, 0, 0], [104, 117, 128]]], np.uint8)
    norm = _steps(make_transforms("mlrc", "bninception")(227, False))[-1]
    out = norm(Image.fromarray(px, "RGB"))
    assert out.dtype == torch.float32 and out.shape == (3, 2, 2)
    # channel 0 = B - 104, channel 1 = G - 117, channel 2 = R - 128
    expected = torch.tensor([[[30 - 104, 128 - 104], [0 - 104, 128 - 104]],
                             [[20 - 117, 0 - 117], [0 - 117, 117 - 117]],
                             [[10 - 128, 255 - 128], [0 - 128, 104 - 128]]], dtype=torch.float32)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("preset", ["mlrc", "conventional"])
def test_bninception_full_pipeline_on_a_uniform_image(preset):
    img = Image.new("RGB", (300, 260), (10, 20, 30))
    size = 227 if preset == "mlrc" else 224
    for train in (True, False):
        x = make_transforms(preset, "bninception")(size, train)(img)
        assert x.shape == (3, size, size)
        for c, v in enumerate((30 - 104, 20 - 117, 10 - 128)):
            assert torch.all(x[c] == v)


def test_imagenet_normalisation_for_torchvision_trunks():
    px = np.array([[[10, 20, 30]]], np.uint8)
    for trunk in ("resnet50", "googlenet", "smallcnn"):
        out = _steps(make_transforms("conventional", trunk)(224, False))[-1](
            Image.fromarray(px, "RGB"))
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip((10, 20, 30), mean, std)])
        torch.testing.assert_close(out.view(3), expected)


def test_mlrc_parameters_and_crop_sizes():
    tr = make_transforms("mlrc", "bninception")
    train, ev = _steps(tr(227, True)), _steps(tr(227, False))
    assert isinstance(train[0], T.Resize) and train[0].size == 256
    rrc = train[1]
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.size == (227, 227)
    assert rrc.scale == (0.16, 1.0) and rrc.ratio == (0.75, 1.33)
    assert isinstance(train[2], T.RandomHorizontalFlip) and train[2].p == 0.5
    assert isinstance(ev[0], T.Resize) and ev[0].size == 256
    assert isinstance(ev[1], T.CenterCrop) and ev[1].size == (227, 227)
    for w, h in ((500, 375), (200, 320)):
        assert tr(227, True)(_image(w, h)).shape == (3, 227, 227)
        assert tr(227, False)(_image(w, h)).shape == (3, 227, 227)


def test_conventional_parameters_and_crop_sizes():
    tr = make_transforms("conventional", "resnet50")
    train, ev = _steps(tr(224, True)), _steps(tr(224, False))
    assert isinstance(train[0], T.RandomResizedCrop) and train[0].size == (224, 224)
    assert train[0].scale == (0.08, 1.0) and train[0].ratio == pytest.approx((3 / 4, 4 / 3))
    assert isinstance(train[1], T.RandomHorizontalFlip)
    assert ev[0].size == 256 and ev[1].size == (224, 224)
    assert tr(224, True)(_image(640, 480)).shape == (3, 224, 224)


def test_eval_crop_is_resize_256_then_centre_227():
    img = _image(400, 300, seed=5)
    x = make_transforms("mlrc", "bninception")(227, False)(img)
    # independently: shorter side to 256 (300 -> 256, 400 -> 341), centre 227 box, BGR - mean
    r = img.resize((341, 256), Image.BILINEAR)
    left, top = int(round((341 - 227) / 2.0)), int(round((256 - 227) / 2.0))
    ref = np.asarray(r.crop((left, top, left + 227, top + 227)), np.float32)
    ref = torch.from_numpy(ref[..., ::-1].copy()).permute(2, 0, 1) - torch.tensor(
        [104.0, 117.0, 128.0]).view(3, 1, 1)
    assert torch.equal(x, ref)


def test_small_images_keep_the_papers_proportions():
    tr = make_transforms("mlrc", "bninception")
    assert _steps(tr(64, False))[0].size == round(256 * 64 / 227)
    assert tr(64, True)(_image(90, 80)).shape == (3, 64, 64)
    assert _steps(make_transforms("conventional", "bninception")(32, False))[0].size == 37


def test_unknown_preset_and_pickling():
    with pytest.raises(UserError, match="unknown transform preset 'mlrcx'"):
        make_transforms("mlrcx", "bninception")
    tr = make_transforms("mlrc", "bninception")
    restored = pickle.loads(pickle.dumps(tr(227, True)))     # DataLoader workers may pickle it
    assert restored(_image(300, 300)).shape == (3, 227, 227)


def test_works_as_image_source_transforms(tmp_path):
    from dmlbench.bench.data import DMLDataset
    from dmlbench.bench.data.loading import ImageSource, Split

    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (80 + 10 * i, 70), (i, 2 * i, 3 * i)).save(p)
        paths.append(str(p))
    ds = DMLDataset("files", labels=np.array([0, 0, 1, 1]), class_names=["a", "b"],
                    train_classes=np.array([0, 1]), test_classes=np.array([], dtype=np.int64),
                    paths=paths)
    src = ImageSource(Split(ds, np.arange(4)), torch.device("cpu"), image_size=64,
                      transforms=make_transforms("mlrc", "bninception"))
    x, y = next(src.eval_batches(4))
    assert x.shape == (4, 3, 64, 64) and y.tolist() == [0, 0, 1, 1]
    assert torch.all(x[3, 0] == 9 - 104) and torch.all(x[3, 2] == 3 - 128)


def test_timm_normalisation_comes_from_the_model_config():
    pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    norm = input_normalization("timm:test_vit")             # a model trained with 0.5 / 0.5
    assert norm.mean == (0.5, 0.5, 0.5) and norm.std == (0.5, 0.5, 0.5)
    assert input_normalization("timm:resnet18").mean == (0.485, 0.456, 0.406)
    assert input_normalization("bninception").space == "BGR"
