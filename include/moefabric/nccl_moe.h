/*
 * moefabric: expert-parallel dispatch and combine for mixture-of-experts models.
 *
 * Self-contained C header (C99 and C++). It reads like NCCL: ncclResult_t return codes,
 * ncclDataType_t element types, a versioned config struct, stream-ordered calls. When nccl.h is
 * on the include path it is used; otherwise ABI-identical declarations of the few NCCL types
 * used here are provided (include nccl.h before this header if you include it at all).
 *
 * Contract: docs/moe-api.md. Threading: one comm is driven by one
 * host thread at a time; different comms are independent.
 */
#ifndef MOEFABRIC_NCCL_MOE_H_
#define MOEFABRIC_NCCL_MOE_H_

#include <stddef.h>
#include <stdint.h>

/* nccl.h needs cuda_runtime.h: use it only when both are on the include path. */
#if !defined(NCCL_H_) && defined(__has_include)
#if __has_include(<nccl.h>) && __has_include(<cuda_runtime.h>)
#include <nccl.h>
#endif
#endif

#ifndef NCCL_H_
/* Same values as nccl.h (NCCL 2.24+). */
typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
  ncclNumResults = 8
} ncclResult_t;
typedef enum {
  ncclInt8 = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclFloat32 = 7,
  ncclFloat64 = 8,
  ncclBfloat16 = 9,
  ncclFloat8e4m3 = 10,
  ncclFloat8e5m2 = 11,
  ncclNumTypes = 12
} ncclDataType_t;
typedef struct ncclComm* ncclComm_t;
struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;
#endif

#if defined(__GNUC__)
#define NCCL_MOE_API __attribute__((visibility("default")))
#else
#define NCCL_MOE_API
#endif

/* This header's library version, encoded like NCCL's: major*10000 + minor*100 + patch (meson's
 * project version; the build checks that they agree). Compile time:
 * #if NCCL_MOE_VERSION_CODE >= NCCL_MOE_VERSION(0, 2, 0); run time: ncclMoeGetVersion. */
#define NCCL_MOE_MAJOR 0
#define NCCL_MOE_MINOR 1
#define NCCL_MOE_PATCH 0
#define NCCL_MOE_VERSION(X, Y, Z) ((X)*10000 + (Y)*100 + (Z))
#define NCCL_MOE_VERSION_CODE NCCL_MOE_VERSION(NCCL_MOE_MAJOR, NCCL_MOE_MINOR, NCCL_MOE_PATCH)

#ifdef __cplusplus
extern "C" {
#endif

/* The loaded library's version, encoded as NCCL_MOE_VERSION_CODE (it may differ from the header
 * an application was compiled with). version NULL: ncclInvalidArgument. */
NCCL_MOE_API ncclResult_t ncclMoeGetVersion(int* version);

/* Opaque communicator for one expert-parallel group. */
typedef struct ncclMoeComm* ncclMoeComm_t;

typedef enum {
  ncclMoeBackendAuto = 0, /* CUDA when the caller's current device is a GPU, else host */
  ncclMoeBackendCuda = 1,
  ncclMoeBackendHost = 2 /* host memory, CPU threads; the bit-exact reference */
} ncclMoeBackend_t;

typedef enum {
  /* default: the expert rank returns one bf16 row per (token, expert) pair; the home rank reduces
   * all K in k order (y = bf16(sum_k fmaf(w[t,k], row, acc))) */
  ncclMoeCombinePerPair = 0,
  /* the expert rank sums its own experts' rows of a token in fp32 (k order, weights applied,
   * fmaf), rounds to bf16 and returns one row per (token, rank); the home rank adds those rows in
   * rank order in fp32 and rounds once more. Fewer combine bytes (by the number of a token's
   * experts that share a rank); a different, equally deterministic result. */
  ncclMoeCombinePerRank = 1
} ncclMoeCombineMode_t;

#define NCCL_MOE_CONFIG_MAGIC 0x4d6f4546u /* "MoEF" */
#define NCCL_MOE_CONFIG_VERSION 2u        /* version 1 (without combineMode) is still accepted */
#define NCCL_MOE_UNDEF_INT ((int)0x80000000)

/* Every field after `version` starts "undefined" (NCCL_MOE_UNDEF_INT) and gets its default, or,
 * for the required ones, an ncclInvalidArgument error naming it. */
typedef struct {
  size_t size;          /* sizeof(ncclMoeConfig_t) */
  unsigned int magic;   /* NCCL_MOE_CONFIG_MAGIC */
  unsigned int version; /* NCCL_MOE_CONFIG_VERSION */
  int numExperts;       /* E (required), E >= nranks; rank r owns [floor(r*E/R), floor((r+1)*E/R)) */
  int numTopk;          /* K (required), 1..16 */
  int hidden;           /* H (required), elements per token; multiple of 16 (and of scaleBlock for fp8) */
  int maxTokensPerRank; /* (required) largest T any rank dispatches; same on all ranks */
  int dispatchType;     /* ncclBfloat16 (default) or ncclFloat8e4m3 (+1 fp32 scale per scaleBlock) */
  int combineType;      /* ncclBfloat16 (default) */
  int scaleBlock;       /* default 128 */
  int expertAlignment;  /* default 1: each expert's row segment starts at a multiple of this */
  int maxPrivateTokens; /* default 128: tokens per peer sent before the receiver grants space */
  int backend;          /* ncclMoeBackend_t, default Auto */
  int timeoutMs;        /* default MOEFABRIC_TIMEOUT_MS, else 60000; bounds every wait */
  int combineMode;      /* ncclMoeCombineMode_t, default ncclMoeCombinePerPair (version 2) */
} ncclMoeConfig_t;

#define NCCL_MOE_CONFIG_INITIALIZER                                                                         \
  {                                                                                                         \
    sizeof(ncclMoeConfig_t), NCCL_MOE_CONFIG_MAGIC, NCCL_MOE_CONFIG_VERSION, NCCL_MOE_UNDEF_INT,            \
        NCCL_MOE_UNDEF_INT, NCCL_MOE_UNDEF_INT, NCCL_MOE_UNDEF_INT, NCCL_MOE_UNDEF_INT, NCCL_MOE_UNDEF_INT, \
        NCCL_MOE_UNDEF_INT, NCCL_MOE_UNDEF_INT, NCCL_MOE_UNDEF_INT, NCCL_MOE_UNDEF_INT, NCCL_MOE_UNDEF_INT, \
        NCCL_MOE_UNDEF_INT                                                                                  \
  }

/* Out-of-band allgather: every rank contributes `bytesPerRank` bytes from `send`; `recv` receives
 * nranks * bytesPerRank bytes in rank order. Called only during init. */
typedef ncclResult_t (*ncclMoeAllGather_t)(const void* send, void* recv, size_t bytesPerRank, void* ctx);

/* Collective. Bootstraps over an existing NCCL communicator (the production path on GPUs). */
NCCL_MOE_API ncclResult_t ncclMoeCommInit(ncclMoeComm_t* moe, ncclComm_t comm, const ncclMoeConfig_t* cfg);
/* Collective. Bootstraps over any out-of-band allgather (MPI, a launcher, torch.distributed). */
NCCL_MOE_API ncclResult_t ncclMoeCommInitAllGather(ncclMoeComm_t* moe, int nranks, int rank,
                                                   ncclMoeAllGather_t fn, void* ctx,
                                                   const ncclMoeConfig_t* cfg);
/* Collective: waits (bounded by timeoutMs) until no peer can still write into this rank's
 * buffers, then frees everything. After an error it tears down locally like Abort. */
NCCL_MOE_API ncclResult_t ncclMoeCommDestroy(ncclMoeComm_t moe);
/* Local: stops the proxy and frees everything; returns promptly even when peers are gone. */
NCCL_MOE_API ncclResult_t ncclMoeCommAbort(ncclMoeComm_t moe);
/* After Destroy or Abort the handle is dead: every call with it (a second Destroy included)
 * returns ncclInvalidArgument, and ncclMoeGetLastError(handle) says so. Handles are never
 * reused. */

/* Text of the last error on this comm (phase, peer rank, provider text); "" when none. Valid
 * until the next call on the comm. NULL or dead comm: the calling thread's last init, destroy or
 * dead-handle failure. */
NCCL_MOE_API const char* ncclMoeGetLastError(ncclMoeComm_t moe);
/* Errors found by the proxy or kernels (bad expert id, timeout, peer lost). Sticky. */
NCCL_MOE_API ncclResult_t ncclMoeCommGetAsyncError(ncclMoeComm_t moe, ncclResult_t* err);
/* Rows recvX / expertY must hold (worst case over all routings). */
NCCL_MOE_API ncclResult_t ncclMoeGetRecvCapacity(ncclMoeComm_t moe, size_t* rows);
NCCL_MOE_API ncclResult_t ncclMoeGetLocalExperts(ncclMoeComm_t moe, int* first, int* count);

/*
 * Dispatch: x [T, H] of dispatchType, xScales [T, H/scaleBlock] fp32 (fp8 only, else NULL),
 * topkIdx/topkWeights [T, K] (-1 = empty slot), numTokens -> one int32 T <= maxTokensPerRank.
 * Out: recvX [rows, H], recvScales [rows, H/scaleBlock] (fp8), recvExpertCounts [local experts].
 * Layout expert-major: expert j's rows start at o_j = sum_{i<j} roundup(count_i,
 * expertAlignment); inside a segment rows go by source rank, then source token, then k.
 * Alignment padding rows are left untouched. topkWeights must stay valid until the matching
 * combine completes. One dispatch->combine in flight per comm.
 * Host backend: host pointers, stream must be NULL, calls return when done.
 */
NCCL_MOE_API ncclResult_t ncclMoeDispatch(const void* x, const float* xScales, const int32_t* topkIdx,
                                          const float* topkWeights, const int32_t* numTokens, void* recvX,
                                          float* recvScales, int32_t* recvExpertCounts, ncclMoeComm_t moe,
                                          cudaStream_t stream);
/* Combine: expertY has recvX's row layout in combineType. At the home rank
 * y[t] = round_bf16(sum over k in order of fmaf(w[t,k], expertY[row(t,k)], acc)), zeros for a
 * token with no expert. Bit-identical across backends and rank counts. */
NCCL_MOE_API ncclResult_t ncclMoeCombine(const void* expertY, void* y, ncclMoeComm_t moe,
                                         cudaStream_t stream);

/* Split halves: the same arguments divided. Between a send and its recv the caller may do other
 * work; the host proxy moves the data meanwhile. x and xScales must stay unchanged until
 * DispatchRecv has run, and expertY until CombineRecv has run (in stream order): the CUDA
 * backend reads a rank's own tokens and rows in place there. */
NCCL_MOE_API ncclResult_t ncclMoeDispatchSend(const void* x, const float* xScales, const int32_t* topkIdx,
                                              const float* topkWeights, const int32_t* numTokens, void* recvX,
                                              float* recvScales, int32_t* recvExpertCounts, ncclMoeComm_t moe,
                                              cudaStream_t stream);
NCCL_MOE_API ncclResult_t ncclMoeDispatchRecv(ncclMoeComm_t moe, cudaStream_t stream);
NCCL_MOE_API ncclResult_t ncclMoeCombineSend(const void* expertY, ncclMoeComm_t moe, cudaStream_t stream);
NCCL_MOE_API ncclResult_t ncclMoeCombineRecv(void* y, ncclMoeComm_t moe, cudaStream_t stream);

/* Counters of the last completed dispatch/combine (extension; see docs/moe-protocol.md). */
typedef struct {
  size_t size;                    /* sizeof(ncclMoeStats_t), set by the caller */
  uint64_t ops;                   /* dispatch+combine rounds completed */
  uint32_t dispatchWritesMaxPeer; /* most RDMA writes this rank sent one peer in the last dispatch */
  uint32_t combineWritesMaxPeer;  /* ... in the last combine */
  uint32_t grantsSent;            /* space grants this rank sent in the last dispatch */
  uint32_t peers;                 /* remote peers */
  uint64_t dispatchBytesSent;     /* payload bytes written to peers, last dispatch */
  uint64_t combineBytesSent;      /* last combine */
  double proxyPostUs;             /* doorbell -> last first-phase write posted, last dispatch */
  double combinePostUs;           /* doorbell -> last write posted, last combine */
  uint64_t registrations;         /* memory registrations made by this comm (constant after init) */
} ncclMoeStats_t;
NCCL_MOE_API ncclResult_t ncclMoeGetStats(ncclMoeComm_t moe, ncclMoeStats_t* stats);

/* What this rank wrote to one peer in the last completed dispatch and combine, as the protocol
 * defines it (docs/moe-protocol.md, "Accounting"): dispatch bytes = header + records routed to
 * the peer; combine bytes = the rows returned to it, or the 16-byte empty marker. */
typedef struct {
  uint64_t dispatchBytes;
  uint64_t combineBytes;
  uint32_t dispatchWrites; /* 1, or 2 when more than maxPrivateTokens records went to the peer */
  uint32_t combineWrites;  /* 1 */
  uint32_t grantsSent;     /* overflow grants this rank wrote to the peer (0 or 1) */
  uint32_t records;        /* token records sent to the peer (one per token routed there) */
  uint32_t rowsReturned;   /* combine rows returned to the peer */
  uint32_t reserved;
} ncclMoePeerStats_t;
/* peers[r] for every rank r < count (count must equal the comm's rank count; the entry of this
 * rank is zero). CUDA backend: read after the stream completed the op, and for comms whose peers
 * are all fabric peers (NVLink stores are not counted: ncclInvalidUsage otherwise). */
NCCL_MOE_API ncclResult_t ncclMoeGetPeerStats(ncclMoeComm_t moe, ncclMoePeerStats_t* peers, int count);

/* Bytes of buffers this comm holds: GPU memory and host memory (pinned or registered). They do
 * not include the caller's tensors. */
NCCL_MOE_API ncclResult_t ncclMoeGetMemoryUsage(ncclMoeComm_t moe, size_t* deviceBytes, size_t* hostBytes);

#ifdef __cplusplus
}
#endif

#endif /* MOEFABRIC_NCCL_MOE_H_ */
