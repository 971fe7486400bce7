#!/usr/bin/env bash
# Creates .venv in the repository root and installs the pinned requirements.
#   bash launch/setup_env.sh                 CPU (the default jaxlib)
#   bash launch/setup_env.sh --accel=tpu     adds jax[tpu] (libtpu) of the pinned JAX version
#   bash launch/setup_env.sh --accel=cuda12  adds jax[cuda12] (or cuda13) of the pinned JAX version
#   bash launch/setup_env.sh --test          adds the test requirements (pytest, CPU torch)
# PYTHON selects the interpreter (default python3; the project targets Python 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

accel=cpu
test=0
for arg in "$@"; do
  case "$arg" in
    --accel=*) accel="${arg#--accel=}" ;;
    --test) test=1 ;;
    *) echo "error: unknown argument '$arg' (use --accel=cpu|tpu|cuda12|cuda13, --test)" >&2; exit 2 ;;
  esac
done
case "$accel" in
  cpu|tpu|cuda12|cuda13) ;;
  *) echo "error: --accel=$accel is not one of cpu, tpu, cuda12, cuda13" >&2; exit 2 ;;
esac

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
requirements=(-r requirements.txt)
[ "$test" = 1 ] && requirements+=(-r requirements-test.txt)
.venv/bin/python -m pip install --quiet "${requirements[@]}"
if [ "$accel" != cpu ]; then
  # The accelerator plugin must match the jax version that requirements.txt resolved to.
  jax_version=$(.venv/bin/python -c "import jax; print(jax.__version__)")
  .venv/bin/python -m pip install --quiet "jax[$accel]==$jax_version"
fi
echo "environment ready: $(.venv/bin/python -c 'import jax; print("jax", jax.__version__, jax.default_backend())')"
