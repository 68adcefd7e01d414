#!/usr/bin/env bash
# Builds libfabric with CUDA support (FI_HMEM_CUDA: shm moves GPU buffers by CUDA IPC) into
# .gpu-deps/libfabric-cuda, to travel with a GPU-machine run next to the staged Debian packages
# of .gpu-deps. Debian's libfabric is built without CUDA, so with it the
# plugin can only offer host buffers over shm/tcp.
#
# Usage (on the development machine, from the repo root):
#   LIBFABRIC_SRC=/path/to/libfabric-source tools/stage-libfabric-cuda.sh
# LIBFABRIC_SRC is a libfabric source tree (a release tarball or a git checkout; a checkout needs
# autoconf/automake/libtool). Use the release that the Debian package ships (1.17.0) so the ABI the
# plugin was built against stays the same. CUDA comes from $CUDA_HOME (default /usr/local/cuda) and
# is loaded at run time (--enable-cuda-dlopen): the library still works on machines without CUDA.
#
# On the GPU machine select it per run with
#   LD_LIBRARY_PATH=$PWD/.gpu-deps/libfabric-cuda/lib:$LD_LIBRARY_PATH
# (tools/gpu-run.sh does this for its "-gdr" runs).
set -euo pipefail
src=${LIBFABRIC_SRC:?set LIBFABRIC_SRC to a libfabric source tree}
cuda=${CUDA_HOME:-/usr/local/cuda}
top=$(git rev-parse --show-toplevel)
dest=$top/.gpu-deps/libfabric-cuda
[ -f "$cuda/include/cuda_runtime.h" ] || { echo "no CUDA toolkit at $cuda" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -a "$src/." "$work/"
cd "$work"
[ -x configure ] || ./autogen.sh > autogen.log 2>&1 || { tail -n 20 autogen.log; exit 1; }
echo "configuring libfabric $(sed -n 's/^AC_INIT(\[libfabric\], \[\([^]]*\)\].*/\1/p' configure.ac) with CUDA from $cuda"
./configure --prefix="$dest" --with-cuda="$cuda" --enable-cuda-dlopen \
  --enable-shm --enable-tcp --enable-rxm --enable-sockets \
  --disable-verbs --disable-efa --disable-psm2 --disable-psm3 --disable-opx --disable-usnic \
  --disable-rxd --disable-udp --disable-mrail --disable-perf --disable-hook_debug \
  --disable-dmabuf_peer_mem --disable-ucx > configure.log 2>&1 || { tail -n 30 configure.log; exit 1; }
grep -q '^#define HAVE_CUDA 1' config.h || { echo "configure did not enable CUDA" >&2; exit 1; }
echo "building (make -j$(nproc)) ..."
make -j"$(nproc)" > make.log 2>&1 || { tail -n 30 make.log; exit 1; }
rm -rf "$dest"
make install > install.log 2>&1 || { tail -n 30 install.log; exit 1; }
rm -rf "$dest/share" "$dest/lib/libfabric.a" "$dest/lib/libfabric.la"
echo "staged: $dest ($(du -sh "$dest" | cut -f1)); providers: $(LD_LIBRARY_PATH=$dest/lib "$dest/bin/fi_info" -l 2>/dev/null | tr -d ':' | tr '\n' ' ')"
