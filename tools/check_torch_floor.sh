#!/usr/bin/env bash
# Reproduce the torch-floor check: a throwaway venv outside the repository with torch held at the
# floor (.ci/constraints-torch-floor.txt), mtlbench installed from this checkout with its test
# extra, then tools/torch_api_probe.py and the model / method / checkpoint / compile / run tests.
#
#   tools/check_torch_floor.sh                 # the declared floor (installs through pip's resolver)
#   tools/check_torch_floor.sh 2.5.1           # another release, below the floor too: the project's
#                                              # other requirements are installed beside it by hand
#   TESTS="tests/test_interop.py" tools/check_torch_floor.sh   # another test selection
#
# Environment: VENV (default /tmp/mtlbench-torch-<version>), TIMEOUT_S for pytest (default 3600),
# MTLBENCH_MTLORA_REF as for the suite. Results were recorded in results/compat/torch_floor.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
floor=$(sed -n 's/^torch==//p' .ci/constraints-torch-floor.txt)
version=${1:-$floor}
venv=${VENV:-/tmp/mtlbench-torch-$version}
python=${PYTHON:-python3}
TESTS=${TESTS:-"tests/test_backbone.py tests/test_layers.py tests/test_method_*.py tests/test_methods.py
  tests/test_optim_groups.py tests/test_precision.py tests/test_pretraining_source.py tests/test_interop.py
  tests/test_interop_tadformer.py tests/test_resume.py tests/test_state_guard.py tests/test_compile.py
  tests/test_compile_methods.py tests/test_run.py tests/test_run_cost.py tests/test_run_logging.py"}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
if [ "$version" = "$floor" ]; then
    "${pip[@]}" -e "$repo[test]" -c .ci/constraints-torch-floor.txt
else
    # pip refuses a torch outside the declared range: install the other requirements beside it.
    # transformers 5 (through peft, the test oracle) needs torch >= 2.6.
    reqs=$("$venv/bin/python" - <<'PY'
import tomllib
project = tomllib.load(open('pyproject.toml', 'rb'))['project']
print('\n'.join(r for r in project['dependencies'] + project['optional-dependencies']['test']
                if not r.startswith('torch')))
PY
)
    printf 'torch==%s\ntransformers<5\n' "$version" > "$venv/constraints.txt"
    printf '%s\n' "$reqs" > "$venv/requirements.txt"
    "${pip[@]}" "torch==$version" -r "$venv/requirements.txt" -c "$venv/constraints.txt"
    "${pip[@]}" --no-deps -e "$repo"
fi

cd "$repo"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$venv/bin/python" -c 'import sys, torch, mtlbench; print("python", sys.version.split()[0], "torch", torch.__version__, "mtlbench from", mtlbench.__file__)'
probe=0
"$venv/bin/python" -W ignore tools/torch_api_probe.py || probe=$?
# SIGINT on timeout, so pytest still prints its summary
# shellcheck disable=SC2086
timeout -s INT "${TIMEOUT_S:-3600}" "$venv/bin/python" -m pytest -q -p no:cacheprovider --tb=line $TESTS
exit $probe
