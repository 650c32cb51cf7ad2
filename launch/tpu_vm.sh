#!/usr/bin/env bash
# Run a latent_jax workflow on a Cloud TPU VM (one host or a pod slice: every worker runs it).
#
#   export TPU_NAME=lj-v4 ZONE=us-central2-b ACCELERATOR=v4-32
#   launch/tpu_vm.sh create                 # the TPU VM (SPOT=1 for a spot VM)
#   launch/tpu_vm.sh setup                  # this checkout + venv + requirements + jax[tpu] on every worker
#   MODEL_DIR=~/hf/Phi-4-multimodal-instruct DATA_DIR=~/data/cinepile \
#       launch/tpu_vm.sh stage              # copy them to every worker under STAGE_DIR
#   CONFIG=configs/cinepile_coconut.py WORKDIR=gs://bucket/runs/cp \
#       launch/tpu_vm.sh run [--config.batch_size=64 ...]
#   launch/tpu_vm.sh ssh | status | delete
#
# Flags: --dry-run (anywhere; or DRY_RUN=1) prints every command instead of running it.
#
# stage: with STAGE_BUCKET=gs://bucket/stage the directories go to the bucket once
# (gcloud storage rsync) and every worker pulls them from there (fast inside the region);
# without it they are scp'd from here to every worker. Workers find them at
# $STAGE_DIR/<basename>; `run` points config.model.path / config.data.path there when
# MODEL_DIR / DATA_DIR are set.
#
# run: every worker runs `python -m latent_jax.main --multihost` (jax.distributed discovers the
# coordinator on TPU VMs; a worker whose peer died fails after --config.heartbeat_timeout_s, default
# 100 s). WORKDIR must be shared by the workers on a multi-host slice: a
# gs:// URI (checkpoints, metrics and results.json are written there by process 0 / Orbax).
# Preemption-safe: when the VM is PREEMPTED (spot) or gone, `run` re-creates it, re-runs
# setup and stage, and starts again; a failed run is retried up to MAX_RESTARTS times; each
# start resumes from WORKDIR/checkpoints. So re-running `run` after any interruption resumes.
set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
args=()
for a in "$@"; do
  if [[ "$a" == "--dry-run" ]]; then DRY_RUN=1; else args+=("$a"); fi
done
set -- "${args[@]+"${args[@]}"}"
cmd="${1:-}"; shift || true

usage() {
  echo "usage: TPU_NAME=... ZONE=... $0 [--dry-run] create|setup|stage|run|ssh|status|delete [--config.* flags for run]" >&2
  exit 2
}
[[ -z "$cmd" ]] && usage
: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-latent_jax}"
STAGE_DIR="${STAGE_DIR:-/tmp/latent_jax_stage}"
CONFIG="${CONFIG:-configs/prosqa_coconut.py}"
WORKDIR="${WORKDIR:-runs/tpu}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
JAX_VERSION="$(grep -E '^jax==' "$ROOT/requirements.txt" | cut -d= -f3 || true)"
PROJECT_FLAG=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAG=(--project="$PROJECT")

# hosts of a slice: v4-N counts TensorCores (2 per chip, 4 chips per host), v5e/v5p/v6e count chips
# (v5litepod / v6e: 4 chips per host on the multi-host shapes; v5p: 4 chips = 8 cores per host)
hosts_of() {
  local t="$1" n="${1##*-}"
  case "$t" in
    v2-*|v3-*|v4-*|v5p-*) echo $(( n <= 8 ? 1 : n / 8 )) ;;
    v5litepod-*|v5e-*|v6e-*) echo $(( n <= 8 ? 1 : n / 4 )) ;;
    *) echo 1 ;;
  esac
}
HOSTS="$(hosts_of "$ACCELERATOR")"

run() {  # run (or, with --dry-run, print) one command
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}
tpu() { run gcloud compute tpus tpu-vm "$@" --zone="$ZONE" "${PROJECT_FLAG[@]+"${PROJECT_FLAG[@]}"}"; }
on_all() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

state() {  # READY, PREEMPTED, ... or NOT_FOUND
  if [[ "$DRY_RUN" == 1 ]]; then echo READY; return; fi
  gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]+"${PROJECT_FLAG[@]}"}" \
    --format='value(state)' 2>/dev/null || echo NOT_FOUND
}

do_create() {
  local spot=()
  [[ -n "${SPOT:-}" ]] && spot=(--spot)
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${spot[@]+"${spot[@]}"}"
}

do_setup() {
  local tgz="${SRC_TGZ:-/tmp/latent_jax_src.tgz}"
  run tar -C "$ROOT" --exclude=.venv --exclude=runs --exclude=.git --exclude=__pycache__ --exclude=.pytest_cache -czf "$tgz" .
  tpu scp "$tgz" "$TPU_NAME":"$tgz" --worker=all
  on_all "mkdir -p $REMOTE_DIR && tar -xzf $tgz -C $REMOTE_DIR && cd $REMOTE_DIR && \
python3 -m venv .venv && . .venv/bin/activate && pip install -q -U pip && \
pip install -q -r requirements.txt && pip install -q 'jax[tpu]==$JAX_VERSION' && \
python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
}

stage_one() {  # stage_one LOCAL_DIR: to every worker's $STAGE_DIR/<basename>
  local src="${1%/}" name
  name="$(basename "$src")"
  if [[ "$DRY_RUN" != 1 && ! -d "$src" ]]; then
    echo "error: $src is not a directory; set MODEL_DIR / DATA_DIR to local directories" >&2
    exit 2
  fi
  if [[ -n "${STAGE_BUCKET:-}" ]]; then
    run gcloud storage rsync --recursive "$src" "${STAGE_BUCKET%/}/$name"
    on_all "mkdir -p $STAGE_DIR/$name && gcloud storage rsync --recursive ${STAGE_BUCKET%/}/$name $STAGE_DIR/$name"
  else
    on_all "mkdir -p $STAGE_DIR"
    tpu scp --recurse "$src" "$TPU_NAME":"$STAGE_DIR/" --worker=all
  fi
}

do_stage() {
  if [[ -z "${MODEL_DIR:-}" && -z "${DATA_DIR:-}" ]]; then
    echo "error: nothing to stage; set MODEL_DIR and/or DATA_DIR" >&2
    exit 2
  fi
  [[ -n "${MODEL_DIR:-}" ]] && stage_one "$MODEL_DIR"
  [[ -n "${DATA_DIR:-}" ]] && stage_one "$DATA_DIR"
  return 0
}

do_run() {
  if [[ "$HOSTS" -gt 1 && "$WORKDIR" != *://* ]]; then
    echo "error: $ACCELERATOR has $HOSTS hosts; WORKDIR=$WORKDIR is not shared by them. Use WORKDIR=gs://bucket/runs/NAME" >&2
    exit 2
  fi
  local st
  st="$(state)"
  if [[ "$st" != READY ]]; then  # preempted (spot) or deleted: bring it back, then resume
    echo "TPU $TPU_NAME is $st: re-creating it, then setup and stage" >&2
    [[ "$st" != NOT_FOUND ]] && tpu delete "$TPU_NAME" --quiet
    do_create
    do_setup
    if [[ -n "${MODEL_DIR:-}${DATA_DIR:-}" ]]; then do_stage; fi
  fi
  local extra="" paths=""
  [[ -n "${MODEL_DIR:-}" ]] && paths+=" --config.model.path=$STAGE_DIR/$(basename "${MODEL_DIR%/}")"
  [[ -n "${DATA_DIR:-}" ]] && paths+=" --config.data.path=$STAGE_DIR/$(basename "${DATA_DIR%/}")"
  if [[ $# -gt 0 ]]; then extra=" $(printf '%q ' "$@")"; extra="${extra% }"; fi
  # retried on every worker together: a failed attempt exits non-zero on all of them
  on_all "cd $REMOTE_DIR && . .venv/bin/activate && for i in \$(seq 0 $MAX_RESTARTS); do \
python -m latent_jax.main --config=$CONFIG --workdir=$WORKDIR --multihost$paths$extra 2>&1 | tee -a run.log; \
[ \${PIPESTATUS[0]} -eq 0 ] && exit 0; echo \"attempt \$i failed; resuming from $WORKDIR\"; sleep 30; done; exit 1"
}

echo "TPU $TPU_NAME ($ACCELERATOR, $HOSTS host(s)) in $ZONE: $cmd" >&2
case "$cmd" in
  create) do_create ;;
  setup) do_setup ;;
  stage) do_stage ;;
  run) do_run "$@" ;;
  ssh) tpu ssh "$TPU_NAME" --worker=0 ;;
  status) tpu describe "$TPU_NAME" ;;
  delete) tpu delete "$TPU_NAME" --quiet ;;
  *) usage ;;
esac
