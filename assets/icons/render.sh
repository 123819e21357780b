#!/bin/sh
# Render the Bulkhead icon into the hicolor PNG sizes. The PNGs are committed, so
# building the package needs no SVG converter; rerun this after editing an SVG.
# Needs rsvg-convert (Debian: librsvg2-bin).
set -eu
cd "$(dirname "$0")"
for size in 16 22 24 32 48 64 128 256; do
    # Small sizes use the pixel-aligned variant; the full drawing blurs below 32 px.
    if [ "$size" -le 24 ]; then src=bulkhead-small.svg; else src=bulkhead.svg; fi
    mkdir -p "hicolor/${size}x${size}/apps"
    rsvg-convert -w "$size" -h "$size" "$src" -o "hicolor/${size}x${size}/apps/bulkhead.png"
done
# The scalable icon is bulkhead.svg itself (installed to hicolor/scalable/apps/).
