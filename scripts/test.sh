#!/usr/bin/env bash
# Runs every test of the workspace. README.md gives this command and .ci/run runs it, so a
# developer and CI run the same thing.
#
# 1. Installs what the tests need when it is missing: Debian's `chromium` for the browser test
#    (node/tests/browser.rs; playwright-core never downloads a browser of its own) and the
#    browser script's pinned npm packages.
# 2. `cargo test --workspace`: every test, the simulator's standing budget included, in a build
#    where no canary can be planted (natter-sim's `canaries` feature is off, as in production).
#    Its natter-node and natter binaries are the production binaries step 4 checks.
# 3. The canary tests (sim/tests/canaries.rs), the only ones that need planting compiled in.
#    They are selected over the whole workspace, as step 2 is, so Cargo resolves every
#    registry dependency with the same features and reuses step 2's builds: only the crates
#    that link natter-canary are compiled again. (`cargo test -p natter-sim --features
#    canaries` would resolve natter-sim's dependencies alone, with other features for tokio,
#    rand's zerocopy, regex and more, and rebuild them and everything above them.) No binary
#    of natter-node or natter is built here.
# 4. scripts/check-no-canaries.sh: the production binaries hold no canary code, and the
#    natter-sim that step 3 built does.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
    echo "test.sh: installing Debian's chromium for the browser test"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi

browser=node/tests/browser
# npm ci writes node_modules/.package-lock.json; an older one means the lockfile changed since.
if [ ! -f "$browser/node_modules/.package-lock.json" ] || [ "$browser/package-lock.json" -nt "$browser/node_modules/.package-lock.json" ]; then
    echo "test.sh: installing the browser test's npm packages"
    npm ci --prefix "$browser" --no-audit --no-fund
fi

cargo test --workspace
cargo test --workspace --features natter-sim/canaries --test canaries
scripts/check-no-canaries.sh
