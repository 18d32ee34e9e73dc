"""The torch.utils.data path (latbench.data.stream): resumable seeded sampler, per-resolution random-resized
crops, the in-memory adapter, and ImageFolder streamed from disk (files the tests write)."""
import numpy as np
import pytest
import torch

import latbench.data.stream as stream
from latbench.data import (DataError, ImageDataset, InMemoryImages, RandomResizedCrop, ResumableSampler,
                           StreamLoader, channel_stats, open_image_folder)
from latbench.train import train

Image = pytest.importorskip("PIL.Image", reason="Pillow decodes ImageFolder images")


def _images(n=40, c=1, hw=32, seed=0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, hw, hw), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    mean, std = channel_stats(images)
    return ImageDataset("toy", images, labels, 10, mean, std)


def test_sampler_is_seeded_per_epoch_and_resumes_at_its_position():
    s = ResumableSampler(50, seed=3)
    s.set_epoch(2)
    full = list(s)
    assert sorted(full) == list(range(50))
    s.set_epoch(2, 17)
    assert list(s) == full[17:] and len(s) == 33
    state = s.state_dict()
    other = ResumableSampler(50, seed=3)
    other.load_state_dict(state)
    assert list(other) == full[17:]
    s.set_epoch(3)
    assert list(s) != full
    assert list(ResumableSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="position 60 outside"):
        s.set_epoch(0, 60)


def test_random_resized_crop_is_a_resized_window_and_deterministic():
    img = torch.arange(3 * 40 * 48, dtype=torch.float32).reshape(3, 40, 48).to(torch.uint8)
    crop = RandomResizedCrop(flip=False)
    a = crop(img, 24, torch.Generator().manual_seed(5))
    b = crop(img, 24, torch.Generator().manual_seed(5))
    assert a.shape == (3, 24, 24) and torch.equal(a, b)
    assert not torch.equal(a, crop(img, 24, torch.Generator().manual_seed(6)))
    flat = torch.full((1, 10, 10), 77, dtype=torch.uint8)     # any window of a flat image is flat
    assert torch.allclose(RandomResizedCrop()(flat, 7, torch.Generator().manual_seed(0)), torch.full((1, 7, 7), 77.0))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_have_one_resolution_each_and_resume_mid_epoch(workers):
    data = _images(n=45)
    loader = StreamLoader(InMemoryImages(data), 8, data.mean, data.std, resolutions=(32, 24, 16), seed=1,
                          drop_last=True, workers=workers)
    assert len(loader) == 5
    full = list(loader.epoch(1))
    sizes = [x.shape[-1] for x, _ in full]
    assert sizes == [loader.resolution(1, b) for b in range(5)] and len(set(sizes)) > 1
    assert all(x.shape == (8, 1, s, s) and x.dtype == torch.float32 for (x, _), s in zip(full, sizes))
    # The state after three batches, restored in a new loader, yields exactly the remaining batches.
    it = loader.epoch(1)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 1, "position": 24}
    fresh = StreamLoader(InMemoryImages(data), 8, data.mean, data.std, resolutions=(32, 24, 16), seed=1,
                         drop_last=True, workers=workers)
    fresh.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(full[3:], list(fresh.resume())):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    labels = torch.cat([y for _, y in StreamLoader(InMemoryImages(data), 8, data.mean, data.std).epoch(0)])
    assert sorted(labels.tolist()) == sorted(data.labels.tolist())      # one epoch visits every sample once


def test_eval_loader_centre_resizes_in_order():
    data = _images(n=10)
    loader = StreamLoader(InMemoryImages(data), 4, data.mean, data.std, resolutions=(32,), crop=None, shuffle=False)
    x, y = next(iter(loader))
    assert torch.allclose(x, data.normalize(data.images[:4])) and torch.equal(y, data.labels[:4])


def test_the_training_loop_takes_a_stream_loader():
    from latbench.models import GraphNet, get_model

    torch.manual_seed(0)
    spec = get_model("resnet20")
    net = GraphNet(spec, {g: 8 for g in spec.groups}, 1)
    data = _images(n=32)
    loader = StreamLoader(InMemoryImages(data), 8, data.mean, data.std, resolutions=(32, 24), drop_last=True)
    history = train(net, data, 1, 0.01, batch_size=8, loader=loader, progress=False, threads=torch.get_num_threads())
    assert history.complete and history.step == 4


def _tree(root, sizes=((40, 48), (30, 30), (64, 20))):
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, n in (("train", 6), ("test", 2)):
        for cls, rgb in colours.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", sizes[i % len(sizes)], rgb).save(root / split / cls / f"{i}.png")
    (root / "train" / "cat" / "readme.txt").write_text("not an image")
    return colours


def test_image_folder_streams_one_decode_per_item(tmp_path, monkeypatch):
    colours = _tree(tmp_path)
    decoded = []
    real = stream.StreamingImageFolder.decode
    monkeypatch.setattr(stream.StreamingImageFolder, "decode", lambda self, i: decoded.append(i) or real(self, i))
    splits = open_image_folder(tmp_path, val_size=2, stats_images=3)
    assert len(decoded) == 3                       # listing the tree decodes nothing; only the stats sample
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 2, 4)
    assert splits.classes == ("cat", "dog") and len(splits.mean) == 3
    decoded.clear()
    image, label = splits.train[0]
    assert len(decoded) == 1 and image.dtype == torch.uint8 and image.shape[0] == 3
    assert tuple(image[:, 0, 0].tolist()) == colours[splits.classes[label]]
    assert image.shape[1:] in {(48, 40), (30, 30), (20, 64)}          # native size: crops come later
    loader = StreamLoader(splits.train, 4, splits.mean, splits.std, resolutions=(16, 12), seed=0)
    decoded.clear()
    batches = list(loader.epoch(0))
    assert len(decoded) == 10 and [x.shape[-1] for x, _ in batches] == [loader.resolution(0, b) for b in range(3)]
    test = StreamLoader(splits.test, 4, splits.mean, splits.std, resolutions=(16,), crop=None, shuffle=False)
    x, y = next(iter(test))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    grey = open_image_folder(tmp_path, val_size=0, grayscale=True, stats_images=2)
    assert grey.val is None and grey.train[0][0].shape[0] == 1
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    decoded.clear()
    broken = open_image_folder(tmp_path, val_size=0, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert decoded == []
    i = [str(f) for f in broken.train.files].index(str(tmp_path / "train" / "dog" / "broken.png"))
    with pytest.raises(DataError, match="broken.png: cannot decode"):
        broken.train[i]
    with pytest.raises(DataError, match="train/<class>"):
        open_image_folder(tmp_path / "train")
    with pytest.raises(DataError, match="leaves no training data"):
        open_image_folder(tmp_path, val_size=50)
    assert np.isfinite(splits.std).all()
