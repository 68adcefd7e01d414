# Sourced by the GPU-machine scripts (tools/gpu-run.sh, tools/gpu-moe.sh) with a scratch folder
# as $1: sets the array lfc_env to the environment that selects the CUDA-enabled libfabric of
# .gpu-deps/libfabric-cuda (tools/stage-libfabric-cuda.sh), or leaves it empty when that is not
# staged. libfabric 1.17 dlopens the unversioned libcuda.so/libcudart.so, which the machine
# lacks: links to the versioned ones go into $1/cuda-shim.
lfc_env=()
_lfc=$PWD/.gpu-deps/libfabric-cuda
if [ -f "$_lfc/lib/libfabric.so.1" ]; then
  _shim=${1:?scratch folder}/cuda-shim
  mkdir -p "$_shim"
  ln -sf "$(ldconfig -p | awk '/libcuda\.so\.1 / {print $NF; exit}')" "$_shim/libcuda.so"
  ln -sf "$(ls /usr/local/cuda/lib64/libcudart.so.* 2>/dev/null | head -n 1)" "$_shim/libcudart.so"
  lfc_env=(LD_LIBRARY_PATH="$_lfc/lib:$_shim:${LD_LIBRARY_PATH:-}" FI_PROVIDER_PATH="$_lfc/lib/libfabric")
fi
unset _lfc _shim
