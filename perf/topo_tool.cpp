// moefabric-topo: which NICs and CPU cores belong to which GPU, as moefabric sees it. Prints an
// "nvidia-smi topo -m"-style table (or JSON) for the live machine or a saved hwloc XML.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/params.h"
#include "fabric/info.h"
#include "perf/perf_tool.h"
#include "topology/topology.h"

namespace {

// The NICs the plugin would use on this machine: libfabric's list for the selected provider,
// with port speeds from rdma-core where it knows the device, and where they came from.
moefabric::Status live_nics(const moefabric::Params& params, std::vector<moefabric::topo::NicDesc>* out,
                            std::string* source) {
  std::vector<moefabric::fabric::NicInfo> nics;
  MF_CHECK(moefabric::fabric::nic_discover(params, &nics).prepend("libfabric: "));
  auto rdma = moefabric::topo::rdma_devices();
  for (const auto& n : nics) {
    moefabric::topo::NicDesc d;
    d.name = n.domain;
    d.provider = n.provider;
    d.speed_mbps = n.speed_mbps;
    d.pci = moefabric::topo::PciAddr::from_sysfs_path(n.pci_path);
    for (const auto& r : rdma)
      if (d.pci && r.pci == d.pci && r.speed_mbps > 0) d.speed_mbps = r.speed_mbps;
    out->push_back(std::move(d));
  }
  *source = std::to_string(nics.size()) + " NIC(s) from libfabric provider " +
            (nics.empty() ? std::string("-") : nics[0].provider) + ", " + std::to_string(rdma.size()) +
            " RDMA device(s) from rdma-core";
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"GPU <-> NIC <-> NUMA <-> CPU affinity as moefabric sees it"};
  moefabric::perf::init_app(app, argc, argv);
  std::string xml;
  bool json = false, hwloc_nics = false;
  app.add_option("-x,--xml", xml,
                 "hwloc XML to read instead of the live machine "
                 "(default: MOEFABRIC_TOPO_XML)");
  app.add_flag("-j,--json", json,
               "print JSON instead of the table (with the perf tools' \"metadata\" object)");
  app.add_flag("--hwloc-nics", hwloc_nics,
               "take NICs from hwloc's network PCI devices instead of libfabric (always so with --xml)");
  app.footer(
      "Environment: MOEFABRIC_PROVIDER / FI_PROVIDER pick the libfabric NICs, "
      "MOEFABRIC_TCP_IFACE restricts tcp, MOEFABRIC_TOPO_XML as --xml.");
  CLI11_PARSE(app, argc, argv);
  moefabric::Params params = moefabric::Params::load();
  if (xml.empty()) xml = params.topo_xml;

  moefabric::topo::Options opts;
  opts.xml = xml;
  std::string note = "NICs from hwloc's network PCI devices";
  if (xml.empty() && !hwloc_nics) {
    const moefabric::Status live = live_nics(params, &opts.nics, &note);
    opts.nics_given = live.ok();
    if (!opts.nics_given) note = live.message() + "; NICs from hwloc instead";
  }
  std::unique_ptr<moefabric::topo::Topology> topo;
  if (moefabric::Status s = moefabric::topo::Topology::load(opts, &topo); !s.ok()) {
    fprintf(stderr, "moefabric-topo: %s\n", s.message().c_str());
    return 1;
  }
  if (json) {
    // The perf tools' metadata first (docs/perf-json.md), then the topology's own fields.
    moefabric::perf::Meta meta{"moefabric-topo"};
    if (opts.nics_given && !opts.nics.empty()) meta.provider = opts.nics[0].provider;
    moefabric::perf::Json doc = {{"metadata", moefabric::perf::metadata(meta)}};
    doc.update(moefabric::perf::Json::parse(topo->json()));
    fputs((doc.dump(2) + "\n").c_str(), stdout);
  } else {
    printf("# %s\n", note.c_str());
    fputs(topo->table().c_str(), stdout);
  }
  return 0;
}
