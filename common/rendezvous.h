// Rendezvous across hosts for the out-of-band channel: rank 0 serves a small TCP relay on
// MOEFABRIC_MASTER_ADDR:MOEFABRIC_MASTER_PORT (by default MASTER_ADDR and MASTER_PORT + 1), every
// rank (rank 0 included) connects, and each allgather is relayed by rank 0 as the local launcher
// relays it over socketpairs. Used by oob_from_env when torchrun's or OpenMPI's variables are
// present. Every wait is bounded (MOEFABRIC_BOOTSTRAP_TIMEOUT_S, default 300 s) and every failure
// names the rank: one that did not connect, did not reach an allgather, sent too much or left.
#pragma once

#include <memory>
#include <string>

#include "common/launch.h"
#include "common/status.h"

namespace moefabric {

struct RendezvousSpec {
  std::string addr;  // rank 0's host, name or address
  int port = 0;      // rank 0's relay port
  int rank = -1, nranks = 0;
  int timeout_s = 300;  // connecting, and each allgather from its first arrival to its last
  std::string source;   // the launcher the spec came from ("torchrun", "OpenMPI", ...) for messages
};

// Reads a launch across hosts from the environment, in this order: MOEFABRIC_RANK/MOEFABRIC_NRANKS
// (without MOEFABRIC_OOB_FD), torchrun's RANK/WORLD_SIZE, OpenMPI's OMPI_COMM_WORLD_RANK/SIZE.
// *found and *spec filled, or *found false: no such launch in the environment. Fails (invalid
// usage) when one is there but incomplete or invalid: the message says which variable and what
// to set.
Status rendezvous_from_env(RendezvousSpec* spec, bool* found);

// Joins the rendezvous: rank 0 starts the relay (a thread that lives as long as the channel);
// every rank connects, retrying until the timeout, and waits until all ranks have connected.
Status rendezvous_open(const RendezvousSpec& spec, std::unique_ptr<OobChannel>* out);

// This process's rank among those of its host: torchrun's LOCAL_RANK, OpenMPI's
// OMPI_COMM_WORLD_LOCAL_RANK, MOEFABRIC_LOCAL_RANK; -1 when none is set (pick the GPU with it).
int local_rank_from_env();

// Largest allgather contribution one rank may send through the relay.
inline constexpr size_t kRendezvousMaxBytes = size_t{64} << 20;

}  // namespace moefabric
