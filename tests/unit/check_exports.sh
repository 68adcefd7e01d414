#!/bin/sh
# The plugin exports exactly NCCL's plugin tables: nothing else leaks (C++ symbols, libfabric
# wrappers) that could clash with the host application.
set -eu
lib=$1
got=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^_init$\|^_fini$' | sort | tr '\n' ' ')
want="ncclNetPlugin_v10 ncclNetPlugin_v11 ncclNetPlugin_v8 ncclNetPlugin_v9 "
if [ "$got" != "$want" ]; then
  echo "exported symbols differ:"; echo " got:  $got"; echo " want: $want"; exit 1
fi
echo "exports ok: $got"
