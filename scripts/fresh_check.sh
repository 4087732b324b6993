#!/usr/bin/env bash
# Does the README still work with what a fresh install gets today?
#
#   bash scripts/fresh_check.sh            # newest releases; rewrites constraints.txt
#   bash scripts/fresh_check.sh --oldest   # the lower bounds of pyproject.toml (constraints-oldest.txt)
#
# In a fresh clone of the committed HEAD (with ../shared beside it, as CI has it) and a new
# virtual environment, both in a temporary folder, it runs the README's install exactly,
# then the README's test command on the quick test set, then `gradlab train` on a tiny random
# BERT and `gradlab figures` on that run at every export width, and prints the versions it
# used. With the newest releases it writes them to constraints.txt (pip freeze of the venv), the
# set last verified, which users may pass with `-c constraints.txt`. The last line is
# "fresh check (MODE): passed" or the step that failed. Options: --venv DIR (default: a new
# temporary folder), --keep (keep the venv), --full (the whole test suite, slow tests too).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

mode=newest venv="" keep=0 test_args=(-m "not slow")
while [ $# -gt 0 ]; do
  case "$1" in
    --oldest) mode=oldest ;;
    --venv) venv=$2; shift ;;
    --keep) keep=1 ;;
    --full) test_args=() ;;
    *) echo "fresh_check.sh: unknown option '$1' (--oldest, --venv DIR, --keep, --full)" >&2; exit 2 ;;
  esac
  shift
done

work=$(mktemp -d /tmp/gradlab-fresh.XXXXXX)
[ -n "$venv" ] || venv=$work/venv
step="start"
[ -z "$(git status --porcelain --untracked-files=no)" ] \
  || echo "note: uncommitted changes are not checked; the check runs on HEAD $(git rev-parse --short HEAD)"
finish() {
  code=$?
  [ "$keep" = 1 ] || rm -rf "$work"
  if [ $code -ne 0 ]; then echo "fresh check ($mode): FAILED at: $step (exit $code)"; fi
}
trap finish EXIT

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# pip, without the warnings some machines' pip configuration prints for every package
quiet_pip() {
  local rc=0
  python -m pip "$@" > "$work/pip.log" 2>&1 || rc=$?
  grep -v "^WARNING: Location '.*' is ignored" "$work/pip.log" || true
  return $rc
}
step="clone HEAD into $work/clone/gradlab"
git clone -q --no-checkout "$repo" "$work/clone/gradlab"
git -C "$work/clone/gradlab" checkout -q --detach "$(git rev-parse HEAD)"
ln -s "$(cd "$repo/.." && pwd)/shared" "$work/clone/shared"
cd "$work/clone/gradlab"
step="create the virtual environment $venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
echo "== $(python --version), pip $(python -m pip --version | cut -d' ' -f2), venv $venv"

if [ "$mode" = oldest ]; then
  # pip has no lowest-direct resolution: pin every direct dependency to its lower bound first;
  # the README's commands below then find them satisfied and install nothing newer.
  step="install the oldest supported versions (constraints-oldest.txt)"
  quiet_pip install -q -c constraints-oldest.txt -e ".[notebooks,test]"
fi

start=$SECONDS
step="README install: python -m pip install -e \".[notebooks]\""
echo "== $step"
quiet_pip install -q -e ".[notebooks]"
echo "   $((SECONDS - start)) s"

start=$SECONDS
step="README test command: bash scripts/test.sh ${test_args[*]}"
echo "== $step"
bash scripts/test.sh -p no:cacheprovider "${test_args[@]}" > "$work/tests.log" 2>&1 \
  || { grep -v "^WARNING: Location" "$work/tests.log" | tail -n 40; exit 1; }
grep -E "[0-9]+ passed" "$work/tests.log" | tail -n 1 || true
echo "   $((SECONDS - start)) s"

start=$SECONDS
step="gradlab train + gradlab figures on a tiny random BERT"
echo "== $step"
cat > "$work/tiny.yaml" <<YAML
name: fresh-tiny
runs_dir: $work/runs
tiny_encoder: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}
method: pcgrad
train_limit: 64
dev_limit: 32
batch_size: 4
max_length: 32
steps: 6
probe_every: 2
probe_batch_size: 4
eval_every: 3
progress: false
threads: 1
YAML
(cd "$work" && python -m gradlab train --config tiny.yaml)
for width in default acl-column acl-page icml-column icml-page neurips; do
  out=$work/figures/$width
  if [ "$width" = default ]; then
    (cd "$work" && python -m gradlab figures runs/fresh-tiny --out "$out")
  else
    (cd "$work" && python -m gradlab figures runs/fresh-tiny --out "$out" --width "$width")
  fi
  n=$(find "$out" -name '*.png' | wc -l)
  [ "$n" -gt 0 ] || { echo "gradlab figures wrote no PNG at width $width"; exit 1; }
  echo "   width $width: $n PNG files"
done
echo "   $((SECONDS - start)) s"

step="versions"
echo "== versions used ($mode)"
python - <<'PY'
from importlib import metadata
names = ["torch", "transformers", "tokenizers", "numpy", "pandas", "pyarrow", "matplotlib",
         "seaborn", "scipy", "scikit-learn", "torchjd", "pytest", "hypothesis", "nbclient"]
print("   " + ", ".join(f"{n} {metadata.version(n)}" for n in names))
PY
if [ "$mode" = newest ]; then
  {
    echo "# Versions last verified by scripts/fresh_check.sh ($(date -u +%Y-%m-%d), $(python --version))."
    echo "# Optional: python -m pip install -e \".[notebooks]\" -c constraints.txt"
    python -m pip freeze --exclude-editable | grep -v '^gradlab' | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/'
  } > "$repo/constraints.txt"
  echo "   wrote constraints.txt ($(grep -vc '^#' "$repo/constraints.txt") packages)"
fi
step="done"
echo "fresh check ($mode): passed"
