"""A local text or token file as fixed-length language-modelling windows.

Accepted files:
    *.npy          a 1-D array of token ids
    *.bin          raw uint16 token ids (the nanoGPT layout; `bin_dtype` to change)
    anything else  UTF-8 text, tokenized with a local HF tokenizer directory when one is
                   given, else as bytes (ids 0..255, BYTE_BOS = 256 starts each document)

    tokens = load_tokens(path, tokenizer_dir)
    windows = lm_windows(tokens, seq_len)          # (N, seq_len + 1): inputs + next token
"""

from __future__ import annotations

import os

import numpy as np

from latent_jax.data.tokenizer import load_tokenizer

BYTE_BOS = 256
BYTE_PAD = 257
BYTE_VOCAB = 258


def load_tokens(path: str, tokenizer_dir: str = "", bin_dtype: str = "uint16") -> np.ndarray:
    """Token ids (int32, 1-D) of a local .npy / .bin / text file."""
    path = os.path.expanduser(os.fspath(path))
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"data.path={path!r} is not a file; point it at a local .txt, .npy or .bin token file")
    if path.endswith(".npy"):
        arr = np.load(path)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{path}: expected a 1-D integer array of token ids, got {arr.dtype} {arr.shape}")
        return arr.astype(np.int32)
    if path.endswith(".bin"):
        return np.fromfile(path, dtype=np.dtype(bin_dtype)).astype(np.int32)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    docs = [d for d in text.split("\n\n") if d.strip()]
    if tokenizer_dir:
        tok = load_tokenizer(tokenizer_dir)
        out: list[int] = []
        for ids in tok.encode_batch(docs):
            if tok.bos_id is not None:
                out.append(tok.bos_id)
            out.extend(ids)
            out.append(tok.eos_id)
        return np.asarray(out, np.int32)
    out_b = []
    for d in docs:
        out_b.append(np.asarray([BYTE_BOS], np.int32))
        out_b.append(np.frombuffer((d + "\n").encode("utf-8"), np.uint8).astype(np.int32))
    return np.concatenate(out_b) if out_b else np.zeros((0,), np.int32)


def lm_windows(tokens: np.ndarray, seq_len: int, stride: int | None = None) -> np.ndarray:
    """(N, seq_len + 1) windows of the token stream, `stride` apart (default seq_len)."""
    stride = stride or seq_len
    n = (len(tokens) - seq_len - 1) // stride + 1
    if n < 1:
        raise ValueError(
            f"the token file has {len(tokens)} tokens, fewer than data.seq_len + 1 = {seq_len + 1}; "
            "use a longer file or a smaller data.seq_len"
        )
    idx = np.arange(n)[:, None] * stride + np.arange(seq_len + 1)[None]
    return np.asarray(tokens, np.int32)[idx]


def split_windows(windows: np.ndarray, eval_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) windows: a seeded permutation, at least one window in each."""
    n = len(windows)
    if n < 2:
        raise ValueError("need at least 2 windows to split train/eval; use a longer file or a smaller data.seq_len")
    perm = np.random.default_rng(seed).permutation(n)
    n_eval = min(n - 1, max(1, int(round(n * eval_fraction))))
    return windows[perm[n_eval:]], windows[perm[:n_eval]]


def write_smoke_text(path: str, n_docs: int = 200, seed: int = 0) -> str:
    """A small synthetic corpus (counting and copying patterns) for smoke runs; returns path."""
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]
    docs = []
    for i in range(n_docs):
        a = int(rng.integers(0, 50))
        seq = " ".join(str(a + j) for j in range(6))
        w = " ".join(rng.choice(words, 4))
        docs.append(f"count {seq}. copy {w} -> {w}.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(docs) + "\n")
    return path
