#!/bin/sh
# Make kjv.txt, the source text of data/{train,valid,test}.txt (see data/README.md), from the
# Debian packages bible-kjv 4.38 (the `bible` program) and bible-kjv-text 4.38 (its text), and
# check every file against the checksums data/README.md gives. Needs a Debian-like system
# (dpkg-deb) and either apt (`apt-get download`, any Debian 12 "bookworm" mirror has both
# packages) or the two .deb files already in OUT_DIR. Nothing is installed.
#
#     sh scripts/get_kjv.sh [OUT_DIR]        # default build/kjv; writes OUT_DIR/kjv.txt
#     python scripts/prepare_kjv.py OUT_DIR/kjv.txt --out data
set -eu
out=${1:-build/kjv}
mkdir -p "$out"
cd "$out"
check() {  # FILE SHA256
    echo "$2  $1" | sha256sum -c --quiet - || { echo "$1: not the file data/README.md describes" >&2; exit 1; }
}
# the amd64 build of bible-kjv is the one whose checksum is known (data/README.md)
[ -f bible-kjv_4.38_amd64.deb ] || apt-get download bible-kjv:amd64=4.38
[ -f bible-kjv-text_4.38_all.deb ] || apt-get download bible-kjv-text=4.38
check bible-kjv_4.38_amd64.deb 75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d
check bible-kjv-text_4.38_all.deb d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a
rm -rf root
dpkg-deb -x bible-kjv_4.38_amd64.deb root
dpkg-deb -x bible-kjv-text_4.38_all.deb root
# -f: one verse per line, each with its reference (Ge1:1 ...); -p: read the text from root/
root/usr/bin/bible -p root/usr/lib -f "gen1:1-rev22:21" < /dev/null > kjv.txt
check kjv.txt cd45f0c9cedab8e4439bd6486c8952c77cc8b0ecc5d1f6ae3513f2039f47229d
echo "$out/kjv.txt: ready (31,102 verses); next: python scripts/prepare_kjv.py $out/kjv.txt --out data"
