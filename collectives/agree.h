// One step of a collective init, the same on every rank: each rank tries its part locally, then
// all ranks allgather "ok, or why not" together with their payload, and either all go on or all
// fail, naming the first rank that failed. A rank that failed locally still joins the exchange
// (the others would wait in it otherwise).
#pragma once

#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "collectives/bootstrap.h"
#include "common/status.h"

namespace moefabric::moe {

struct AgreeStep {
  const char* prefix;        // "init", "init (CUDA backend)"
  const char* what;          // "exchanging addresses": the step, for an allgather failure
  const char* peer_failed;   // "could not set up its transport": what a failed peer did
  Status::Code peer_status;  // what this rank returns when a peer failed
};

// OK with every rank's payload in *all (rank order), or the step's error: the allgather failed
// (kSystemError), this rank failed (`local`, its message sent to the others), or rank r failed
// (step.peer_status, naming r and its reason). Every message starts with step.prefix.
template <class T>
Status agree(ncclMoeAllGather_t fn, void* ctx, int nranks, const AgreeStep& step, const Status& local,
             const T& mine, std::vector<T>* all) {
  static_assert(std::is_trivially_copyable_v<T>, "the payload crosses the allgather as bytes");
  struct Record {
    int32_t ok;
    char why[192];
    T payload;
  };
  Record rec{};
  rec.ok = local.ok() ? 1 : 0;
  snprintf(rec.why, sizeof rec.why, "%s", local.message().c_str());
  rec.payload = mine;
  std::vector<Record> recs(static_cast<size_t>(nranks));
  if (fn(&rec, recs.data(), sizeof(Record), ctx) != ncclSuccess)
    return Status::system_error(std::string(step.prefix) + ": the allgather callback failed while " +
                                step.what);
  if (!local.ok()) return Status(local).prepend(std::string(step.prefix) + ": ");
  for (int r = 0; r < nranks; ++r) {
    if (!recs[r].ok)
      return Status(step.peer_status, std::string(step.prefix) + ": rank " + std::to_string(r) + " " +
                                          step.peer_failed + ": " +
                                          std::string(recs[r].why, strnlen(recs[r].why, sizeof recs[r].why)));
  }
  all->resize(static_cast<size_t>(nranks));
  for (int r = 0; r < nranks; ++r) (*all)[r] = recs[r].payload;
  return Status::kOk;
}

}  // namespace moefabric::moe
