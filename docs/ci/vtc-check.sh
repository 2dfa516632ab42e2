#!/usr/bin/env bash
# vtc regression check for any CI system: build the bundle, compare it with the stored
# baseline, write JUnit XML and JSON beside it.
#
# usage: vtc-check.sh SOURCE RECIPE BASELINE_DIR OUT_DIR [extra vtc-export options...]
#   SOURCE        what vtc-export reads (checkpoint dir, .onnx file or zoo name)
#   RECIPE        a shipped recipe name or a recipe YAML file
#   BASELINE_DIR  the stored baseline (report.json, manifest.json, report.md); when it
#                 has no report.json yet, this run's bundle becomes the baseline
#   OUT_DIR       where the new bundle is written (replaced if it exists)
# environment:
#   VTC_UPDATE_BASELINE=1   after a passing check, store this run as the new baseline
#   VTC_CHECK_ARGS          extra options for `vtc check`, e.g. "-t max_speedup_drop=0.10"
# outputs: OUT_DIR.junit.xml and OUT_DIR.check.json (beside OUT_DIR)
# exit: 0 no regression, 1 a regression (or the bundle's own gates failed), 2 bad input,
#       3 internal error -- the codes of vtc-export and vtc check.
set -euo pipefail

if [ "$#" -lt 4 ]; then
  echo "usage: $0 SOURCE RECIPE BASELINE_DIR OUT_DIR [vtc-export options...]" >&2
  exit 2
fi
source_spec=$1 recipe=$2 baseline=$3 out=${4%/}
shift 4

store_baseline() {
  tmp="$baseline.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  cp "$out/report.json" "$out/manifest.json" "$out/report.md" "$tmp/"
  rm -rf "$baseline" && mv "$tmp" "$baseline"
  echo "vtc-check: stored $out as the baseline in $baseline"
}

export_rc=0
vtc-export "$source_spec" --recipe "$recipe" --out "$out" --force "$@" || export_rc=$?
if [ "$export_rc" -ne 0 ] && [ "$export_rc" -ne 1 ]; then
  exit "$export_rc"  # no bundle (bad input, crash, interrupted)
fi

if [ ! -f "$baseline/report.json" ]; then
  echo "vtc-check: no baseline at $baseline yet"
  mkdir -p "$(dirname "$baseline")"
  store_baseline
  exit "$export_rc"
fi

check_rc=0
# shellcheck disable=SC2086  # VTC_CHECK_ARGS is a list of options
vtc check "$out" --baseline "$baseline" --junit "$out.junit.xml" --json "$out.check.json" \
  ${VTC_CHECK_ARGS:-} || check_rc=$?
if [ "$check_rc" -eq 0 ] && [ "${VTC_UPDATE_BASELINE:-0}" = "1" ]; then
  store_baseline
fi
exit "$check_rc"
