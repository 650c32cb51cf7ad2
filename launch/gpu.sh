#!/usr/bin/env bash
# Run a latent_jax workflow on one GPU node (all its GPUs form the mesh).
#
#   launch/gpu.sh setup                                    # venv + jax[cuda12] + requirements
#   CONFIG=configs/prosqa_coconut.py WORKDIR=runs/gpu launch/gpu.sh run [--config.model.dtype=bfloat16 ...]
#   launch/gpu.sh bench                                    # benchmarks/decode.py in bfloat16
#   launch/gpu.sh mfu                                      # benchmarks/mfu.py: training MFU of a ~1B decoder
#
# Multi-node GPU: run `launch/gpu.sh run --multihost` on every node with
# JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID
# (0..N-1) set; latent_jax reads all three (jax itself reads only the address). Under SLURM
# they are discovered. WORKDIR must be a directory every node sees (shared disk or gs://).
# The same works as several processes on one machine (each sees its own GPUs, or on CPU
# XLA_FLAGS=--xla_force_host_platform_device_count=4; tests/test_multihost.py does this):
#   export JAX_COORDINATOR_ADDRESS=127.0.0.1:12355 JAX_NUM_PROCESSES=2
#   JAX_PROCESS_ID=0 launch/gpu.sh run --multihost & JAX_PROCESS_ID=1 launch/gpu.sh run --multihost
# A process whose peer died waits config.heartbeat_timeout_s (default 100 s) before it fails:
# add --config.heartbeat_timeout_s=20 to fail faster (too low and a slow step looks like a death).
set -euo pipefail
cd "$(dirname "$0")/.."

cmd="${1:-}"; shift || true
CONFIG="${CONFIG:-configs/prosqa_coconut.py}"
WORKDIR="${WORKDIR:-runs/gpu}"
JAX_VERSION="$(grep -E '^jax==' requirements.txt | cut -d= -f3)"
# let XLA use most of the GPU memory but leave room for the CUDA context
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

case "$cmd" in
  setup)
    python3 -m venv .venv
    . .venv/bin/activate
    pip install -q -U pip
    pip install -q -r requirements.txt
    pip install -q "jax[cuda12]==$JAX_VERSION"
    python -c 'import jax; print(jax.devices())'
    ;;
  run)
    . .venv/bin/activate
    python -m latent_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
    ;;
  bench)
    . .venv/bin/activate
    python benchmarks/decode.py --dtype bfloat16 "$@"
    ;;
  mfu)
    . .venv/bin/activate
    python benchmarks/mfu.py "$@"
    ;;
  *)
    echo "usage: $0 setup | run [--multihost] [--config.* overrides] | bench [benchmark flags] | mfu [mfu flags]" >&2
    exit 2
    ;;
esac
