#!/usr/bin/env bash
# System packages the tests use: Debian's Chromium, driven by Playwright for the MLflow UI test
# (tests/integration), PostgreSQL, a throw-away cluster for the server test, and Java 17, the
# JVM of the Spark backend's tests (tests/test_spark.py).
#
# Idempotent: installs only what is missing, and runs `apt-get update` only then. Never fails
# the caller: where apt is unavailable (not Debian, not root, no sudo) or the install fails, it
# says so and exits 0, and the tests that need the missing program skip with that reason.
set -uo pipefail

PACKAGES=(chromium postgresql openjdk-17-jre-headless)

say() { echo "install-system-deps: $*"; }

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    say "apt-get not available; not installing ${PACKAGES[*]} (browser/PostgreSQL/Spark tests will skip)"
    exit 0
fi

missing=()
for package in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    say "${PACKAGES[*]} already installed"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    say "not root and no passwordless sudo; not installing ${missing[*]} (tests needing them will skip)"
    exit 0
fi

say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get update -qq; then
    say "WARNING: apt-get update failed; not installing ${missing[*]} (tests needing them will skip)"
    exit 0
fi
# --no-install-recommends keeps Chromium's install small; the test needs no extras.
if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    say "WARNING: apt-get install ${missing[*]} failed (tests needing them will skip)"
    exit 0
fi
say "installed ${missing[*]}"
