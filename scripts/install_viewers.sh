#!/usr/bin/env bash
# The browser viewer the DICOMweb tests drive (tests/test_dicomweb_ohif.py): OHIF Viewer v3's
# built `dist/` (npm's @ohif/app, unpacked: its own dependencies are not needed to serve it) and
# playwright-core (drives Debian's chromium), into .testdata/viewers (git-ignored). Best effort:
# without npm or the registry, the viewer tests are skipped and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
OHIF_VERSION=3.13.2
PLAYWRIGHT_VERSION=1.65.2
target=.testdata/viewers
stamp="$target/.installed-$OHIF_VERSION-$PLAYWRIGHT_VERSION"
[ -e "$stamp" ] && exit 0
command -v npm >/dev/null 2>&1 || { echo "note: npm missing: the OHIF viewer tests will be skipped"; exit 0; }
rm -rf "$target" && mkdir -p "$target"
(
    cd "$target"
    npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null
    tar xzf "ohif-app-$OHIF_VERSION.tgz" && mv package ohif && rm "ohif-app-$OHIF_VERSION.tgz"
    npm install --silent --no-audit --no-fund --prefix . "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
) || { echo "note: OHIF or playwright-core could not be installed: the OHIF viewer tests will be skipped"; exit 0; }
touch "$stamp"
