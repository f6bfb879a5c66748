#!/usr/bin/env bash
# Installs detectron2 into the current Python environment without compiling anything.
#
# detectron2 is not on PyPI under its own name; sal-detectron2 0.7.2 is a faithful build of upstream
# (mid-2024 main) that ships only a cp310 wheel. Its Python code runs on 3.11 and its compiled _C
# targets another torch; C4 Faster/Mask R-CNN training and VOC/COCO evaluation do not need _C.
# So: download the wheel, retag it py3-none-any, drop _C and the stray top-level `tools` package
# (it would shadow any other `tools` module), repack, install.  Idempotent: skips when importable.
set -euo pipefail
PY=$(command -v "${PYTHON:-python}")
case "$PY" in /*) ;; *) PY="$PWD/$PY" ;; esac  # absolute, but keep the venv symlink
if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('detectron2') is None)"; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip install -q wheel
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
    sal-detectron2==0.7.2 -d "$work/dl"
cd "$work"
"$PY" -m wheel unpack -d unpacked dl/sal_detectron2-0.7.2-*.whl
src=unpacked/sal_detectron2-0.7.2
rm -f "$src"/detectron2/_C.*.so
rm -rf "$src/tools"
sed -i -e '/^detectron2\/_C\./d' -e '/^tools\//d' "$src"/sal_detectron2-0.7.2.dist-info/RECORD
sed -i -e 's/^Tag: .*/Tag: py3-none-any/' -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: true/' \
    "$src"/sal_detectron2-0.7.2.dist-info/WHEEL
mkdir -p packed
"$PY" -m wheel pack -d packed "$src"
"$PY" -m pip install -q packed/sal_detectron2-0.7.2-py3-none-any.whl
"$PY" -c "import detectron2; print('detectron2', detectron2.__version__, 'installed')"
