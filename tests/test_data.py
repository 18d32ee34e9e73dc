"""Data loaders: IDX files, splits, augmentation and resumable batch order (small files written here)."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from latbench.data import (Augment, BatchLoader, DataError, ImageDataset, channel_stats, holdout, load_cifar,
                           load_dataset, load_image_folder, load_mnist, pad_to, random_crop, random_flip, read_idx)


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def fake_mnist(folder, n_train=30, n_test=10, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_roundtrip_pad_and_split(tmp_path, compress):
    arrays = fake_mnist(tmp_path, compress=compress)
    splits = load_mnist(tmp_path, val_size=5)
    images, labels = arrays["train"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (25, 5, 10)
    assert splits.train.images.shape == (25, 1, 32, 32) and splits.train.images.dtype == torch.uint8
    # 28×28 centred in 32×32 with a 2-pixel zero border; the validation set is the *last* 5 images.
    assert np.array_equal(splits.train.images[:, 0, 2:30, 2:30].numpy(), images[:25])
    assert np.array_equal(splits.val.images[:, 0, 2:30, 2:30].numpy(), images[25:])
    assert int(splits.train.images[:, :, :2].sum()) == 0
    assert splits.val.labels.tolist() == labels[25:].tolist()
    assert splits.test.labels.dtype == torch.int64
    # Normalisation statistics come from the full training files (padding included).
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2))) / 255.0
    assert splits.train.mean[0] == pytest.approx(padded.mean(), rel=1e-9)
    assert splits.train.std[0] == pytest.approx(padded.std(), rel=1e-9)


def test_idx_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    fake_mnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-20])  # truncated gzip stream
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*corrupt"):
        load_mnist(tmp_path)
    raw = tmp_path / "short.idx"
    write_idx(raw, np.zeros((4, 3), np.uint8), compress=False)
    raw.write_bytes(raw.read_bytes()[:-1])
    with pytest.raises(DataError, match="short.idx.*truncated"):
        read_idx(raw)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz not found"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("imagenet-22k", tmp_path)


def _dataset(n=40, c=3, hw=8, seed=0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, hw, hw), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    mean, std = channel_stats(images)
    return ImageDataset("toy", images, labels, 10, mean, std)


def test_normalize_and_stats():
    data = _dataset()
    x = data.normalize(data.images)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_random_crop_is_a_shifted_window():
    data = _dataset(n=16)
    out = random_crop(data.images, 4, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(data.images, (4, 4, 4, 4))
    for i in range(16):
        windows = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8], out[i])]
        assert windows, f"image {i} is not a crop of its padded input"
    assert not torch.equal(out, data.images)  # 16 random offsets are not all the centre


def test_random_flip_mirrors_about_half():
    data = _dataset(n=200, hw=6)
    out = random_flip(data.images, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, x.flip(-1)) and not torch.equal(o, x) for o, x in zip(out, data.images)])
    kept = torch.tensor([torch.equal(o, x) for o, x in zip(out, data.images)])
    assert bool((flipped | kept).all()) and 60 < int(flipped.sum()) < 140


def test_loader_resumes_mid_epoch_with_identical_batches():
    loader = BatchLoader(_dataset(n=50), batch_size=8, shuffle=True, augment=Augment(), seed=3, drop_last=True)
    assert len(loader) == 6
    full = list(loader.epoch(2))
    resumed = list(loader.epoch(2, start=4))
    assert len(resumed) == 2
    for (xa, ya), (xb, yb) in zip(full[4:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = list(loader.epoch(3))
    assert not torch.equal(full[0][1], other_epoch[0][1])
    # One epoch visits distinct samples (a permutation, minus the dropped remainder).
    plain = BatchLoader(_dataset(n=50), batch_size=8, shuffle=True, seed=3)
    labels = torch.cat([y for _, y in plain.epoch(0)])
    assert sorted(labels.tolist()) == sorted(plain.data.labels.tolist())


def test_holdout_and_pad_errors():
    data = _dataset(n=10)
    train, val = holdout(data, 3)
    assert torch.equal(val.images, data.images[7:]) and len(train) == 7
    assert holdout(data, 0)[1] is None
    with pytest.raises(DataError, match="no training data"):
        holdout(data, 10)
    with pytest.raises(DataError, match="larger than the target"):
        pad_to(data.images, 4)


# ------------------------------------------------------------------------------------------------ CIFAR
def cifar_arrays(n, num_classes, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n)


def write_cifar10_binary(folder, per_batch=6):
    folder.mkdir(parents=True)
    expected = []
    for i, name in enumerate([f"data_batch_{j}.bin" for j in range(1, 6)] + ["test_batch.bin"]):
        data, labels = cifar_arrays(per_batch, 10, i)
        (folder / name).write_bytes(np.concatenate([labels[:, None].astype(np.uint8), data], axis=1).tobytes())
        expected.append((data, labels))
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    return expected


def test_cifar10_binary(tmp_path):
    expected = write_cifar10_binary(tmp_path / "cifar-10-batches-bin")
    splits = load_dataset("cifar10", tmp_path, val_size=4)
    train_data = np.concatenate([d for d, _ in expected[:5]])
    train_labels = np.concatenate([y for _, y in expected[:5]])
    assert (len(splits.train), len(splits.val), len(splits.test)) == (26, 4, 6)
    # Records are R, G, B planes of 32×32 in row-major order.
    assert np.array_equal(splits.train.images[3].numpy(), train_data[3].reshape(3, 32, 32))
    assert np.array_equal(splits.val.labels.numpy(), train_labels[26:])
    assert np.array_equal(splits.test.images.numpy(), expected[5][0].reshape(-1, 3, 32, 32))
    assert splits.train.classes[2] == "class2" and splits.in_channels == 3
    (tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin").write_bytes(b"\x01" * 5000)
    with pytest.raises(DataError, match="data_batch_3.bin.*truncated"):
        load_dataset("cifar10", tmp_path, val_size=4)


def test_cifar100_binary_uses_the_fine_label(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    for name, seed in (("train.bin", 0), ("test.bin", 1)):
        data, fine = cifar_arrays(7, 100, seed)
        coarse = fine // 5
        (folder / name).write_bytes(np.concatenate([coarse[:, None], fine[:, None], data], axis=1).astype(np.uint8).tobytes())
    splits = load_dataset("cifar100", folder, val_size=2)
    assert splits.num_classes == 100
    assert np.array_equal(splits.test.labels.numpy(), cifar_arrays(7, 100, 1)[1])


def test_cifar_python_version_with_restricted_unpickler(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_arrays(4, 10, i)
        # Protocol 2 with bytes keys, as the official (Python 2) files have.
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels.tolist(), b"batch_label": b"x"},
                                                 protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]},
                                                       protocol=2))
    splits = load_cifar(tmp_path, 10, val_size=0)
    assert len(splits.train) == 20 and splits.val is None and splits.train.classes[9] == "c9"
    assert np.array_equal(splits.test.images.numpy(), cifar_arrays(4, 10, 5)[0].reshape(-1, 3, 32, 32))

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(DataError, match="data_batch_2.*refusing to load global posix.system"):
        load_cifar(tmp_path, 10)
    assert not (tmp_path / "pwned").exists()


def test_cifar_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-bin/data_batch_1.bin.*unpack the official archive"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="needs a data folder"):
        load_dataset("cifar100")


# ------------------------------------------------------------------------------------------- ImageFolder
def test_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is needed to decode ImageFolder images")
    colors = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, n in (("train", 5), ("val", 2)):
        for cls, rgb in colors.items():
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                img = Image.new("RGB", (48, 40), rgb)
                img.putpixel((0, 0), (0, 255, 0))  # a corner pixel the centre crop must cut away
                img.save(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    splits = load_dataset("imagefolder", tmp_path, val_size=2)
    assert splits.train.classes == ("cat", "dog") and splits.in_channels == 3
    assert splits.train.images.shape[1:] == (3, 32, 32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 4)
    # Every image is one flat colour after the centre crop: red for cats, blue for dogs.
    for images, labels in ((splits.train.images, splits.train.labels), (splits.test.images, splits.test.labels)):
        for img, label in zip(images, labels):
            rgb = colors[splits.train.classes[int(label)]]
            assert torch.equal(img, torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32))
    assert splits.test.labels.tolist() == [0, 0, 1, 1]
    grey = load_image_folder(tmp_path, size=16, val_size=0, grayscale=True)
    assert grey.train.images.shape[1:] == (1, 16, 16)
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="broken.png: cannot decode"):
        load_image_folder(tmp_path, val_size=0)
    with pytest.raises(DataError, match="train/<class>"):
        load_image_folder(tmp_path / "train")
