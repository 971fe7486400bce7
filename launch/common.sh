# shellcheck shell=bash
# Helpers sourced by the launch scripts (not run on its own).

# POSIX single quotes: a remote, srun-started or login shell parses these words, and a printed line can be pasted
# back into any shell. A --flag= prefix stays outside the quotes only to keep printed commands readable.
quote() {
  local word prefix out=() q="'\\''"
  for word in "$@"; do
    prefix=
    if [[ $word =~ ^--[A-Za-z0-9._-]+= ]]; then prefix=${BASH_REMATCH[0]}; word=${word#"$prefix"}; fi
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$prefix$word"); else out+=("$prefix'${word//\'/$q}'"); fi
  done
  printf '%s\n' "${out[*]}"
}

# Waits for every pid given (children of this shell, so not in a $(...) subshell); sets exit_status to the first
# non-zero exit status among them (0 if all succeeded).
wait_all() {
  local pid code
  exit_status=0
  for pid in "$@"; do
    # wait returns early when a trapped signal arrives; bash keeps the status, so wait again once it has exited.
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
    set +e; wait "$pid"; code=$?; set -e
    [[ $exit_status != 0 || $code == 0 ]] || exit_status=$code
  done
}
