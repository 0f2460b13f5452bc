#!/usr/bin/env bash
# What the database change feed costs writers: the catalog with the feed (the default) and
# with --no-change-feed, PUTs only, same run (see scripts/ab.sh). Writes $OUT/feed.md.
set -euo pipefail
cd "$(dirname "$0")"
NAME=feed A_NAME=feed B_NAME=no-feed B_FLAGS=--no-change-feed MIX=${MIX:-put=100} exec ./ab.sh
