"""Setup shared by the side-by-side benchmarks against transformers (decode.py, rl.py).

One copy of: thread pinning for both libraries, the model-size options, the random
Llama-style model that transformers initialises and saves and latent_jax loads, loading it
on the torch side, and the machine's measured limits (memory bandwidth, peak GEMM FLOP/s)
for a roofline. Import this module before jax: `pin_threads` must act before jax, torch
and numpy start their thread pools.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from threads import pin_xla_threads  # noqa: E402  (benchmarks/threads.py)


def pin_threads(argv=None) -> int:
    """--threads N from argv for XLA, numpy's BLAS and torch (0: each library's default)."""
    n = pin_xla_threads(argv)
    if n:
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(n)
        import torch

        torch.set_num_threads(n)
    return n


def add_model_args(p, *, hidden: int, layers: int, heads: int, mlp: int, vocab: int, kv_heads: bool = False) -> None:
    """The model-size options and --threads (defaults per script)."""
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--heads", type=int, default=heads)
    if kv_heads:
        p.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    p.add_argument("--mlp", type=int, default=mlp)
    p.add_argument("--vocab", type=int, default=vocab)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both sides (0 = library defaults)")


def build_llama(out_dir: str, args, max_positions: int = 2048) -> None:
    """A random Llama-style model (tied embeddings, seed 0) saved as safetensors in out_dir."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=getattr(args, "kv_heads", None) or args.heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(out_dir, safe_serialization=True)


def load_torch_llama(model_dir: str, dtype: str = "float32"):
    """(model in eval mode with sdpa attention, device) for transformers' side."""
    import torch
    import transformers

    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=tdt, attn_implementation="sdpa")
    return m.to(dev).eval(), dev


def machine_limits(repeats: int = 5) -> dict:
    """Measured on this machine with numpy (OpenBLAS, the threads pinned above):
    copy_gbs: np.copyto of 256 MB, read + written bytes / time; read_gbs: a float32 GEMV
    over a 256 MB matrix (read-bound: the decode step's access pattern), bytes / time;
    gemm_gflops: a 2048^3 float32 GEMM. Best of `repeats`."""
    import numpy as np

    def best(f):
        f()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    a = np.ones(1 << 26, np.float32)
    b = np.empty_like(a)
    copy_s = best(lambda: np.copyto(b, a))
    m = np.ones((8192, 8192), np.float32)
    v = np.ones(8192, np.float32)
    read_s = best(lambda: m @ v)
    x = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    gemm_s = best(lambda: x @ x)
    return dict(copy_gbs=2 * a.nbytes / copy_s / 1e9, read_gbs=m.nbytes / read_s / 1e9,
                gemm_gflops=2 * 2048 ** 3 / gemm_s / 1e9)
