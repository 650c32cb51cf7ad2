#!/usr/bin/env bash
# One accelerator check (issue 24 item 6): attention parity of the fused kernel against the xla
# path, MFU of the 1.1B decoder in bf16, a 2-layer Phi-4-MM-shaped Coconut step, and decode tokens/s
# at batch 1 and 8 against transformers on the same device, printed as one table
# (benchmarks/accelerator.py says what each row measures; rows print as they finish). At most 8
# minutes on one H100: a row starts only while its reserve of --budget-s (470 s) is left, and the
# whole call is stopped at LJ_CHECK_TIMEOUT (480 s). Exit status 1 when a row fails.
#
#   benchmarks/accelerator.sh                        # one GPU (pip install -e .[gpu]) or a TPU host
#   benchmarks/accelerator.sh --smoke                # any machine, toy sizes: checks the code paths
#   benchmarks/accelerator.sh --json-out check.json  # also the figures as JSON
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python}"
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
# jax takes 85% of the GPU's memory, transformers' side of the decode rows the rest
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.85}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error
exec timeout "${LJ_CHECK_TIMEOUT:-480}" "$py" benchmarks/accelerator.py "$@"
