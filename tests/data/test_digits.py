"""Digits / MNIST loading, augmentation ramps, dataset multiplicity, text windows."""

import gzip
import sys

import numpy as np
import pytest

from latent_jax.data import text_tokens as tt
from latent_jax.data.augment import AugmentConfig, affine_augment, dataset_multiplicity, ramp_fraction
from latent_jax.data.digits import load_digits_splits
from latent_jax.data.mnist import load_mnist


def test_digits_splits():
    tr, te = load_digits_splits(0.2, seed=0)
    assert len(tr) + len(te) == 1797
    assert tr.images.dtype == np.uint8 and tr.images.shape[1:] == (8, 8)
    assert tr.images.max() == 255 and tr.images.min() == 0
    counts = np.bincount(te.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified
    tr2, te2 = load_digits_splits(0.2, seed=0)
    np.testing.assert_array_equal(te.labels, te2.labels)
    # no test image is a training image (by index the splits are disjoint; check contents)
    tr_set = {x.tobytes() for x in tr.images}
    assert sum(x.tobytes() in tr_set for x in te.images) < 5  # the raw data has a few duplicates


def test_mnist_missing_names_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"python -m latent_jax.data.mnist prepare --data_dir {tmp_path}$"):
        load_mnist(str(tmp_path))


def _idx(path, arr: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    with open(str(path) + (".gz" if gz else ""), "wb") as f:
        f.write(gzip.compress(raw) if gz else raw)


def test_mnist_prepared_and_read_through_tfds_without_tensorflow(tmp_path):
    """prepare (IDX files from disk, gzipped or not) writes tfds's mnist as array_record;
    load_mnist reads it back with tfds.data_source, exactly, and TensorFlow is never imported."""
    from latent_jax.data import mnist

    rng = np.random.default_rng(0)
    src = tmp_path / "idx"
    src.mkdir()
    want = {}
    for split, n, gz in (("train", 12, True), ("test", 5, False)):
        imgs, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
        img_name, lab_name = mnist.IDX_FILES[split]
        _idx(src / img_name, imgs, gz)
        _idx(src / lab_name, labels, gz)
        want[split] = (imgs, labels)
    data_dir = str(tmp_path / "tfds")
    assert mnist.main(["prepare", "--data_dir", data_dir, "--source_dir", str(src)]) == 0
    assert mnist.mnist_prepared(data_dir)
    train, test = load_mnist(data_dir)
    for got, (imgs, labels) in ((train, want["train"]), (test, want["test"])):
        order = np.lexsort(got.images.reshape(len(got.images), -1).T)  # tfds shuffles on write
        ref = np.lexsort(imgs.reshape(len(imgs), -1).T)
        np.testing.assert_array_equal(got.images[order], imgs[ref])
        np.testing.assert_array_equal(got.labels[order], labels[ref].astype(np.int32))
        assert got.images.dtype == np.uint8 and got.labels.dtype == np.int32
    assert "tensorflow" not in sys.modules
    (src / mnist.IDX_FILES["test"][0]).write_bytes(b"garbage!")
    with pytest.raises(ValueError, match="not an MNIST IDX file"):
        mnist.read_idx(str(src / mnist.IDX_FILES["test"][0]))


def test_mnist_prepare_downloads_without_tensorflow(tmp_path, monkeypatch):
    """The download path of prepare (tfds's download manager, the .gz files read as they come),
    served from a loopback HTTP server standing in for the MNIST mirror."""
    import functools
    import http.server
    import threading

    from latent_jax.data import mnist

    rng = np.random.default_rng(1)
    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    n = {"train": 6, "test": 3}
    for split, (img_name, lab_name) in mnist.IDX_FILES.items():
        _idx(srv_dir / img_name, rng.integers(0, 256, (n[split], 28, 28), dtype=np.uint8), True)
        _idx(srv_dir / lab_name, rng.integers(0, 10, n[split], dtype=np.uint8), True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(srv_dir))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(mnist.MNISTWithoutTF, "URL", f"http://127.0.0.1:{srv.server_address[1]}/")
        assert mnist.main(["prepare", "--data_dir", str(tmp_path / "tfds")]) == 0
    finally:
        srv.shutdown()
        srv.server_close()
    train, test = load_mnist(str(tmp_path / "tfds"))
    assert (len(train), len(test)) == (6, 3) and train.images.shape[1:] == (28, 28)
    assert "tensorflow" not in sys.modules


def test_augment_identity_and_shift():
    img = np.zeros((1, 9, 9), np.uint8)
    img[0, 4, 4] = 200
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(affine_augment(img, rng, 0.0, 30, 0.3), img)
    np.testing.assert_array_equal(affine_augment(img, rng, 1.0, 0.0, 0.0), img)
    # a 90 degree-bounded rotation about the centre keeps the centre pixel
    rot = affine_augment(img, rng, 1.0, 90.0, 0.0)
    assert rot[0, 4, 4] == 200
    batch = np.repeat(img, 64, 0)
    moved = affine_augment(batch, np.random.default_rng(1), 1.0, 0.0, 0.3)
    assert (moved[:, 4, 4] != 200).sum() > 32  # most images moved
    assert moved.dtype == np.uint8


def test_ramps_and_multiplicity():
    a = AugmentConfig(enabled=True, prob_start=0.2, prob_end=1.0, degrees_start=0, degrees_end=10,
                      translate_start=0.0, translate_end=0.1, auto_fraction=0.5)
    assert a.at(0, 100) == (0.2, 0.0, 0.0)
    p, d, t = a.at(25, 100)
    assert abs(p - 0.6) < 1e-9 and abs(d - 5.0) < 1e-9 and abs(t - 0.05) < 1e-9
    assert a.at(80, 100) == (1.0, 10.0, 0.1)
    assert ramp_fraction(10, 0) == 1.0
    # ceil(20 * 1e6 / (60000 * 786)) = 1; ceil(20 * 1e6 / (1000 * 66)) = 304
    assert dataset_multiplicity(20, 1_000_000, 60000, 786) == 1
    assert dataset_multiplicity(20, 1_000_000, 1000, 66) == 304
    assert dataset_multiplicity(20, 1_000_000, 1000, 66, max_multiplicity=8) == 8
    assert dataset_multiplicity(0, 1_000_000, 1000, 66) == 1
    with pytest.raises(ValueError, match="augment.prob_end"):
        AugmentConfig(prob_end=2.0)


def test_text_tokens(tmp_path):
    p = tt.write_smoke_text(str(tmp_path / "c.txt"), n_docs=20)
    toks = tt.load_tokens(p)
    assert toks.dtype == np.int32 and toks.max() <= tt.BYTE_BOS and (toks == tt.BYTE_BOS).sum() == 20
    w = tt.lm_windows(toks, 16)
    np.testing.assert_array_equal(w[1, :16], toks[16:32])
    tr, ev = tt.split_windows(w, 0.1)
    assert len(tr) + len(ev) == len(w) and len(ev) >= 1
    np.save(tmp_path / "t.npy", np.arange(100))
    np.testing.assert_array_equal(tt.load_tokens(str(tmp_path / "t.npy")), np.arange(100))
    with pytest.raises(FileNotFoundError, match="data.path"):
        tt.load_tokens(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="seq_len"):
        tt.lm_windows(np.arange(10), 16)
