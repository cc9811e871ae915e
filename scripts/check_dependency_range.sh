#!/usr/bin/env bash
# Run the core differential tests (hf_lightning against transformers.Trainer) with the oldest and the
# newest transformers and lightning that pyproject.toml allows, each pair in a throwaway virtualenv.
#
#   scripts/check_dependency_range.sh                       # the default pairs below
#   scripts/check_dependency_range.sh 5.23.0,2.5.6 ...      # TRANSFORMERS,LIGHTNING pairs of your choice
#   TESTS="tests/test_differential_basic.py" scripts/check_dependency_range.sh
#
# Keep DEFAULT_PAIRS at the ends of the ranges in hf_lightning/_versions.py (== pyproject.toml).
# Pairs outside the ranges run too (HF_LIGHTNING_SKIP_VERSION_CHECK=1), to find out whether a range
# can be widened. torch is pinned to 2.13.0 (CPU wheel) and installed first. Exit status: 0 when
# every pair passed. KEEP=1 keeps the virtualenvs (printed) for inspection.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_PAIRS=("5.23.0,2.5.0" "5.24.0,2.6.6")
PAIRS=("$@")
[ ${#PAIRS[@]} -eq 0 ] && PAIRS=("${DEFAULT_PAIRS[@]}")
TESTS="${TESTS:-$(cd "$ROOT" && ls tests/test_differential_*.py | tr '\n' ' ')}"
TORCH="${TORCH:-2.13.0}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/hf-lightning-range.XXXXXX")"
declare -a RESULTS
status=0

for pair in "${PAIRS[@]}"; do
    transformers_version="${pair%%,*}"
    lightning_version="${pair##*,}"
    venv="$WORK/venv-$transformers_version-$lightning_version"
    echo "=== transformers $transformers_version, lightning $lightning_version ($venv)"
    python3 -m venv "$venv"
    install_log="$WORK/install-$transformers_version-$lightning_version.log"
    if ! { "$venv/bin/pip" install -q "torch==$TORCH" \
        && "$venv/bin/pip" install -q -e "$ROOT[test]" "transformers==$transformers_version" "lightning==$lightning_version"; } >"$install_log" 2>&1; then
        RESULTS+=("transformers $transformers_version, lightning $lightning_version: INSTALL FAILED ($(grep -E '^ERROR' "$install_log" | grep -v 'Ignored the following' | tail -1))")
        status=1
        continue
    fi
    log="$WORK/pytest-$transformers_version-$lightning_version.log"
    # shellcheck disable=SC2086
    (cd "$ROOT" && HF_LIGHTNING_SKIP_VERSION_CHECK=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider $TESTS) >"$log" 2>&1
    code=$?
    summary="$(grep -E '^(=+ )?[0-9]+ (passed|failed)|^[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s' "$log" | tail -1)"
    installed="$("$venv/bin/python" -c 'import importlib.metadata as m; print(*(f"{n} {m.version(n)}" for n in ("transformers", "lightning", "torch", "accelerate")), sep=", ")')"
    RESULTS+=("$installed: ${summary:-no summary (exit $code), see $log}")
    [ $code -ne 0 ] && status=1
    [ "${KEEP:-0}" = "1" ] || rm -rf "$venv"
done

echo
echo "Tests ($(echo $TESTS | wc -w) files):"
printf '  %s\n' "${RESULTS[@]}"
echo "Logs in $WORK"
exit $status
