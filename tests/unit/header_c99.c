/* The public header compiles alone as C99 (a C translation unit, nothing else included). */
#include "moefabric/nccl_moe.h"

int moefabric_header_c99_check(void);
int moefabric_header_c99_check(void) {
  ncclMoeConfig_t cfg = NCCL_MOE_CONFIG_INITIALIZER;
  ncclMoeStats_t st;
  st.size = sizeof st;
  ncclResult_t (*fn)(ncclMoeComm_t, cudaStream_t) = ncclMoeDispatchRecv;
  return (int)cfg.size + (int)st.size + (fn != 0);
}
