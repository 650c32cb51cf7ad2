#!/usr/bin/env bash
# Run a latent_jax workflow on a Cloud TPU VM (single host or a pod slice, every worker).
#
#   TPU_NAME=lj-v4 ZONE=us-central2-b ACCELERATOR=v4-32 launch/tpu_vm.sh create
#   TPU_NAME=lj-v4 ZONE=us-central2-b launch/tpu_vm.sh setup          # copy this checkout, install
#   TPU_NAME=lj-v4 ZONE=us-central2-b CONFIG=configs/prosqa_coconut.py WORKDIR=gs://bucket/runs/x \
#       launch/tpu_vm.sh run [--config.batch_size=64 ...]              # on all workers, --multihost
#   TPU_NAME=lj-v4 ZONE=us-central2-b launch/tpu_vm.sh ssh            # a shell on worker 0
#   TPU_NAME=lj-v4 ZONE=us-central2-b launch/tpu_vm.sh delete
#
# Every worker runs the same command; latent_jax.main --multihost calls
# jax.distributed.initialize(), which discovers the coordinator on TPU VMs. Checkpoints and
# metrics should go to a shared path (a gs:// bucket: Orbax writes there directly).
set -euo pipefail

cmd="${1:-}"; shift || true
: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR="${REMOTE_DIR:-latent_jax}"
CONFIG="${CONFIG:-configs/prosqa_coconut.py}"
WORKDIR="${WORKDIR:-runs/tpu}"
JAX_VERSION="$(grep -E '^jax==' "$(dirname "$0")/../requirements.txt" | cut -d= -f3)"

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE" $PROJECT_FLAG; }
on_all() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

case "$cmd" in
  create)
    tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${SPOT:+--spot}
    ;;
  setup)
    root="$(cd "$(dirname "$0")/.." && pwd)"
    tar -C "$root" --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/latent_jax_src.tgz .
    tpu scp /tmp/latent_jax_src.tgz "$TPU_NAME":/tmp/latent_jax_src.tgz --worker=all
    on_all "mkdir -p $REMOTE_DIR && tar -xzf /tmp/latent_jax_src.tgz -C $REMOTE_DIR && cd $REMOTE_DIR && \
      python3 -m venv .venv && . .venv/bin/activate && pip install -q -U pip && \
      pip install -q -r requirements.txt && pip install -q 'jax[tpu]==$JAX_VERSION' && \
      python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
    ;;
  run)
    extra="$*"
    on_all "cd $REMOTE_DIR && . .venv/bin/activate && \
      python -m latent_jax.main --config=$CONFIG --workdir=$WORKDIR --multihost $extra 2>&1 | tee -a run.log"
    ;;
  ssh)
    tpu ssh "$TPU_NAME" --worker=0
    ;;
  delete)
    tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    echo "usage: TPU_NAME=... ZONE=... $0 create|setup|run|ssh|delete [extra --config.* flags for run]" >&2
    exit 2
    ;;
esac
