#!/usr/bin/env bash
# Re-fetch the dashboard's vendored libraries from the npm registry (`npm pack`, no install
# scripts run) and copy their dist files here. Versions are pinned; VENDOR.md lists them and their
# licenses. Run from anywhere: bash src/geofleet/web/dashboard/vendor.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent leaflet@1.9.4 uplot@1.6.32 topojson-client@3.1.0 world-atlas@2.0.2 >/dev/null
for tgz in *.tgz; do mkdir -p "${tgz%.tgz}" && tar -xzf "$tgz" -C "${tgz%.tgz}"; done
mkdir -p "$out"
cp leaflet-1.9.4/package/dist/leaflet.js "$out/leaflet.js"
cp leaflet-1.9.4/package/dist/leaflet.css "$out/leaflet.css"
cp leaflet-1.9.4/package/LICENSE "$out/LICENSE.leaflet"
cp uplot-1.6.32/package/dist/uPlot.iife.min.js "$out/uPlot.iife.min.js"
cp uplot-1.6.32/package/dist/uPlot.min.css "$out/uPlot.min.css"
cp uplot-1.6.32/package/LICENSE "$out/LICENSE.uplot"
cp topojson-client-3.1.0/package/dist/topojson-client.min.js "$out/topojson-client.min.js"
cp topojson-client-3.1.0/package/LICENSE "$out/LICENSE.topojson-client"
cp world-atlas-2.0.2/package/countries-110m.json "$out/countries-110m.json"
cp world-atlas-2.0.2/package/LICENSE "$out/LICENSE.world-atlas"
echo "vendored into $out"
