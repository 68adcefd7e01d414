#!/bin/sh
# Shipped libraries export exactly their public API: nothing else leaks (C++ symbols, libfabric
# wrappers) that could clash with the host application. $2: "moe" for libmoefabric, else the plugin.
set -eu
lib=$1
got=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^_init$\|^_fini$' | sort | tr '\n' ' ')
if [ "${2:-plugin}" = moe ]; then
  want="ncclMoeCombine ncclMoeCombineRecv ncclMoeCombineSend ncclMoeCommAbort ncclMoeCommDestroy ncclMoeCommGetAsyncError ncclMoeCommInit ncclMoeCommInitAllGather ncclMoeDispatch ncclMoeDispatchRecv ncclMoeDispatchSend ncclMoeGetLastError ncclMoeGetLocalExperts ncclMoeGetMemoryUsage ncclMoeGetPeerStats ncclMoeGetRecvCapacity ncclMoeGetStats ncclMoeGetVersion "
else
  want="ncclNetPlugin_v10 ncclNetPlugin_v11 ncclNetPlugin_v12 ncclNetPlugin_v8 ncclNetPlugin_v9 "
fi
if [ "$got" != "$want" ]; then
  echo "exported symbols differ:"; echo " got:  $got"; echo " want: $want"; exit 1
fi
echo "exports ok: $got"
