#!/usr/bin/env bash
# Download the Python 3.12 wheels that a bare CUDA machine (Python 3.12 + torch + transformers, no internet) needs
# for `benchmarks/run_gpu.sh`: nerfstudio and what it imports beyond such an image, diffusers, tyro, viser.
# Run it on a machine with internet (a package registry), in the repository root; carry .whl/ to the GPU machine.
#   bash benchmarks/fetch_wheels.sh  # then: OUT=results bash benchmarks/run_gpu.sh on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
    manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# diffusers 0.35.2 works with huggingface-hub 1.x; fpsample 0.3.3 is the newest with a cp312 manylinux wheel
# (nerfstudio only imports it).
while read -r spec; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$spec"
done <<'LIST'
nerfstudio==1.1.5
diffusers==0.35.2
tyro==1.0.17
viser==0.2.7
nerfacc==0.5.2
gsplat==1.4.0
msgspec==0.23.0
websockets==17.4
docstring_parser==0.18.0
typeguard==4.6.1
shtab==1.13.0
appdirs==1.4.4
defusedxml==0.7.1
dill==0.4.1
multiprocess==0.70.19
pathos==0.3.5
ppft==1.7.8
pyquaternion==0.9.9
pytorch-msssim==1.0.0
rawpy==0.28.0
splines==0.3.0
tensorly==0.10.0
fpsample==0.3.3
LIST
ls .whl | wc -l
du -sh .whl
