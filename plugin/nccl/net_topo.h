// The topology file NCCL is handed when a device groups NICs: the plugin's devices as NCCL will
// see them (topo_file.h writes and installs it).
#pragma once

#include <string>

#include "plugin/net/net.h"

namespace moefabric::fabric {

// The topology XML for net's current devices.
std::string nccl_topo_of(const Net& net);
// When a device of `net` groups NICs (and MOEFABRIC_TOPO_FILE allows it): writes the file and
// points NCCL_TOPO_FILE at it. Once per Net instance (NCCL may init comms from several threads
// at once); logs what it did.
void install_nccl_topo(const Net& net);
// Removes the installed file (the plugin's last finalize and its unload).
void uninstall_nccl_topo();

}  // namespace moefabric::fabric
