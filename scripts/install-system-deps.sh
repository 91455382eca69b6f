#!/usr/bin/env bash
# System packages the tests use: Debian's Chromium, driven by Playwright for the MLflow UI test
# (tests/integration), PostgreSQL, a throw-away cluster for the server test, and Java 17, the
# JVM of the Spark backend's tests (tests/test_spark.py).
#
# Idempotent: installs only what is missing, and runs `apt-get update` only then. Outside CI
# it never fails the caller: where apt is unavailable (not Debian, not root, no sudo) or the
# install fails, it says so and exits 0, and the tests that need the missing program skip with
# that reason. In CI (CI=true) the same cases fail loudly with exit 1: a CI run must run every
# test, and tests/ci_strict.py turns any skip there into a failure as well.
set -uo pipefail

PACKAGES=(chromium postgresql openjdk-17-jre-headless)

say() { echo "install-system-deps: $*"; }

case "${CI:-}" in
    1 | [Tt][Rr][Uu][Ee] | [Yy][Ee][Ss]) in_ci=1 ;;
    *) in_ci=0 ;;
esac

# $1: what went wrong; $2: what that means for the tests outside CI.
cannot_install() {
    if [[ $in_ci -eq 1 ]]; then
        echo "install-system-deps: ERROR: $1; CI=${CI} needs ${PACKAGES[*]} installed" >&2
        exit 1
    fi
    say "$1 ($2)"
    exit 0
}

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    cannot_install "apt-get not available; not installing ${PACKAGES[*]}" \
        "browser/PostgreSQL/Spark tests will skip"
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
    cannot_install "not root and no passwordless sudo; not installing ${missing[*]}" \
        "tests needing them will skip"
fi

say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get update -qq; then
    cannot_install "apt-get update failed; not installing ${missing[*]}" \
        "tests needing them will skip"
fi
# --no-install-recommends keeps Chromium's install small; the test needs no extras.
if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    cannot_install "apt-get install ${missing[*]} failed" "tests needing them will skip"
fi
say "installed ${missing[*]}"
