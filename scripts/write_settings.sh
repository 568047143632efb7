#!/usr/bin/env bash
# Writes the settings file pgml-proxy reads next to its executable (see proxy/src/app/config.rs):
#   write_settings.sh FILE ORT_DYLIB PG_DIR HF_HOME DATA_DIR DATASETS_DIR
# Keys are the binary's long option names. Called by scripts/setup.sh.
set -euo pipefail
[ $# -eq 6 ] || { echo "usage: $0 FILE ORT_DYLIB PG_DIR HF_HOME DATA_DIR DATASETS_DIR" >&2; exit 2; }
file=$1
# A TOML basic string: backslashes and double quotes escaped.
quote() { local v=${1//\\/\\\\}; printf '"%s"' "${v//\"/\\\"}"; }
mkdir -p "$(dirname "$file")"
{
  echo "# Written by \`make setup\`: where this checkout's ONNX Runtime, Postgres, models and"
  echo "# datasets are. pgml-proxy reads it from next to its executable; flags, environment"
  echo "# variables and --config FILE win over it. Rewritten by every \`make setup\`."
  echo "ort-dylib = $(quote "$2")"
  echo "pg-dir = $(quote "$3")"
  echo "hf-home = $(quote "$4")"
  echo "data-dir = $(quote "$5")"
  echo "datasets-dir = $(quote "$6")"
} > "$file.tmp"
mv "$file.tmp" "$file"
echo "setup: wrote $file"
