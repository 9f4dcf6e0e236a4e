#!/usr/bin/env bash
# Proves that production binaries cannot plant canaries (natter-canary's planted bugs).
#
# natter-canary's `active` keeps a marker byte string in every binary that links planting
# code (its `canaries` feature), and in no other. This script fails if
#   - a production binary built by the workspace invocation (natter-node, natter) holds the
#     marker, or
#   - the simulator built with `--features canaries` (natter-sim) does NOT hold it: the
#     positive control, showing that the search finds the marker where it is.
#
# It reads the binaries a test run left; it builds nothing. Run it after
#   cargo test --workspace                                                 # natter-node, natter
#   cargo test --workspace --features natter-sim/canaries --test canaries  # natter-sim, canaries
# as scripts/test.sh does (the second command builds no natter-node or natter binary). Binaries
# may be given instead: --production FILE (repeatable) and --planted FILE.
set -euo pipefail
cd "$(dirname "$0")/.."

# natter_canary::MARKER (canary/src/lib.rs). If the two ever differ, the positive control fails.
marker='natter-canary-code-linked'
target_dir=${CARGO_TARGET_DIR:-target}

production=()
planted=""
while [ $# -gt 0 ]; do
    case "$1" in
        --production) production+=("$2"); shift 2 ;;
        --planted) planted=$2; shift 2 ;;
        *) echo "usage: $0 [--production FILE]... [--planted FILE]" >&2; exit 2 ;;
    esac
done
if [ ${#production[@]} -eq 0 ]; then
    production=("$target_dir/debug/natter-node" "$target_dir/debug/natter")
fi
planted=${planted:-$target_dir/debug/natter-sim}

failed=0
for binary in "${production[@]}" "$planted"; do
    if [ ! -f "$binary" ]; then
        echo "check-no-canaries: $binary does not exist; build it first (see this script's header)" >&2
        exit 2
    fi
done

for binary in "${production[@]}"; do
    if grep -q -a -F -- "$marker" "$binary"; then
        echo "check-no-canaries: FAIL: $binary holds canary planting code (marker '$marker'); something enabled natter-canary's \`canaries\` feature in the workspace build" >&2
        failed=1
    else
        echo "check-no-canaries: ok: $binary holds no canary code"
    fi
done

if grep -q -a -F -- "$marker" "$planted"; then
    echo "check-no-canaries: ok: $planted (built with --features canaries) holds the marker, so the search works"
else
    echo "check-no-canaries: FAIL: $planted holds no marker '$marker': either it was not built with \`--features canaries\` or the marker no longer reaches binaries, and then this check proves nothing" >&2
    failed=1
fi

exit "$failed"
