// Topology over hwloc XML fixtures of three 8-GPU machine shapes (tests/topology/fixtures):
// GPU -> NIC rails, NUMA nodes, proxy cores, PCIe path classes and sysfs paths.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <set>
#include <string>

#include "topology/topology.h"

using moefabric::topo::Options;
using moefabric::topo::Path;
using moefabric::topo::PciAddr;
using moefabric::topo::Topology;

namespace {

std::unique_ptr<Topology> load_fixture(const std::string& name) {
  Options o;
  o.xml = std::string(MOEFABRIC_SOURCE_ROOT) + "/tests/topology/fixtures/" + name + ".xml";
  std::unique_ptr<Topology> t;
  const moefabric::Status s = Topology::load(o, &t);
  INFO(s.message());
  REQUIRE(s.ok());
  return t;
}

std::string pci(unsigned bus, unsigned dev = 0) { return PciAddr{0, bus, dev, 0}.str(); }

// Every GPU's rails: names of the NICs, and the checks common to all shapes.
std::vector<std::string> rails_of(const Topology& t, int g) {
  std::vector<std::string> out;
  for (int r : t.gpus()[g].rails) {
    REQUIRE(t.gpus()[g].path[r] == Path::kPix);
    out.push_back(t.nics()[r].name);
  }
  return out;
}

void check_common(const Topology& t, int cores_per_gpu) {
  REQUIRE(t.gpus().size() == 8);
  REQUIRE(t.numa_nodes() == 2);
  std::set<int> used;
  for (const auto& g : t.gpus()) {
    INFO("GPU" << g.index);
    REQUIRE(g.numa == (g.index < 4 ? 0 : 1));
    REQUIRE(static_cast<int>(g.proxy_cpus.size()) == cores_per_gpu);
    for (int c : g.proxy_cpus) {
      REQUIRE(used.insert(c).second);  // no core shared between two GPUs' proxies
      // cores of socket 0 have the lower half of the first-hyperthread numbers
      REQUIRE((c < cores_per_gpu * 4) == (g.numa == 0));
    }
    for (size_t n = 0; n < t.nics().size(); ++n) {
      // NICs on the other socket are across the SMP interconnect
      if (t.nics()[n].numa != g.numa)
        REQUIRE(g.path[n] == Path::kSys);
      else
        REQUIRE(g.path[n] != Path::kSys);
    }
  }
  for (const auto& n : t.nics()) {
    REQUIRE(n.provider == "efa");
    REQUIRE(n.pci.has_value());
    REQUIRE(n.pci_path.rfind("/sys/devices/pci0000:", 0) == 0);
    REQUIRE(n.pci_path.size() > n.pci->str().size());
    REQUIRE(n.pci_path.substr(n.pci_path.size() - n.pci->str().size()) == n.pci->str());
  }
  auto j = nlohmann::json::parse(t.json());
  REQUIRE(j["gpus"].size() == 8);
  REQUIRE(j["nics"].size() == t.nics().size());
  REQUIRE(j["gpus"][0]["rails"].size() == t.gpus()[0].rails.size());
}

}  // namespace

TEST_CASE("topology: p5-like, 8 GPUs with 4 EFA NICs each behind their switch", "[topology]") {
  auto t = load_fixture("p5");
  REQUIRE(t->nics().size() == 32);
  check_common(*t, 12);
  const unsigned gpu_bus[8] = {0x53, 0x64, 0x75, 0x86, 0x97, 0xa8, 0xb9, 0xca};
  for (int g = 0; g < 8; ++g) {
    INFO("GPU" << g);
    REQUIRE(t->gpus()[g].pci.str() == pci(gpu_bus[g]));
    auto r = rails_of(*t, g);
    REQUIRE(r.size() == 4);
    for (int k = 0; k < 4; ++k) {
      unsigned nic_bus = gpu_bus[g] - 4 + static_cast<unsigned>(k);
      REQUIRE(r[k] == "rdmap" + std::to_string(nic_bus) + "s0");
      REQUIRE(t->nics()[t->gpus()[g].rails[k]].pci->str() == pci(nic_bus));
    }
  }
  // The first GPU's first NIC: the path Linux would show for it.
  REQUIRE(t->nics()[0].pci_path == "/sys/devices/pci0000:4d/0000:4d:00.0/0000:4e:00.0/0000:4f:00.0");
}

TEST_CASE("topology: p5en-like, 8 GPUs with 2 EFA NICs each", "[topology]") {
  auto t = load_fixture("p5en");
  REQUIRE(t->nics().size() == 16);
  check_common(*t, 12);
  const unsigned gpu_bus[8] = {0x18, 0x38, 0x58, 0x78, 0x98, 0xb8, 0xd8, 0xf8};
  for (int g = 0; g < 8; ++g) {
    INFO("GPU" << g);
    REQUIRE(t->gpus()[g].pci.str() == pci(gpu_bus[g]));
    auto r = rails_of(*t, g);
    REQUIRE(r == std::vector<std::string>{"rdmap" + std::to_string(gpu_bus[g] - 2) + "s0",
                                          "rdmap" + std::to_string(gpu_bus[g] - 1) + "s0"});
    // the other NICs of its socket are reachable through the host, not a switch
    for (size_t n = 0; n < t->nics().size(); ++n)
      if (t->nics()[n].numa == t->gpus()[g].numa &&
          std::find(t->gpus()[g].rails.begin(), t->gpus()[g].rails.end(), static_cast<int>(n)) ==
              t->gpus()[g].rails.end())
        REQUIRE(t->gpus()[g].path[n] == Path::kNode);
  }
}

TEST_CASE("topology: p4d-like, pairs of GPUs share one EFA NIC", "[topology]") {
  auto t = load_fixture("p4d");
  REQUIRE(t->nics().size() == 4);
  check_common(*t, 6);
  const unsigned bus[4] = {0x10, 0x20, 0x90, 0xa0};
  for (int g = 0; g < 8; ++g) {
    INFO("GPU" << g);
    REQUIRE(t->gpus()[g].pci.str() == pci(bus[g / 2], g % 2 ? 0x1d : 0x1c));
    REQUIRE(rails_of(*t, g) == std::vector<std::string>{"rdmap" + std::to_string(bus[g / 2]) + "s27"});
  }
}

TEST_CASE("topology: given NICs and GPUs, virtual NICs, lookups and bad input", "[topology]") {
  Options o;
  o.xml = std::string(MOEFABRIC_SOURCE_ROOT) + "/tests/topology/fixtures/p4d.xml";
  o.nics_given = true;
  o.nics = {{"rdmap32s27", "efa", PciAddr{0, 0x20, 0x1b, 0}, 100000}, {"lo", "tcp", std::nullopt, 0}};
  o.gpus_given = true;
  o.gpus = {PciAddr{0, 0xa0, 0x1d, 0}, PciAddr{0, 0x20, 0x1c, 0}};
  std::unique_ptr<Topology> t;
  REQUIRE(Topology::load(o, &t).ok());
  REQUIRE(t->gpus().size() == 2);
  REQUIRE(t->gpu_by_pci(PciAddr{0, 0x20, 0x1c, 0}) == 1);
  REQUIRE(t->gpu_by_pci(PciAddr{0, 0x21, 0, 0}) == -1);
  // GPU0 sits on the other socket from the one real NIC: SYS, the same as the virtual one, so
  // both are its rails; GPU1 shares the NIC's switch.
  REQUIRE(t->gpus()[0].path == std::vector<Path>{Path::kSys, Path::kSys});
  REQUIRE(t->gpus()[0].rails == std::vector<int>{0, 1});
  REQUIRE(t->gpus()[1].path[0] == Path::kPix);
  REQUIRE(t->gpus()[1].rails == std::vector<int>{0});
  REQUIRE(t->nics()[1].pci_path.empty());
  REQUIRE(t->nics()[1].numa == -1);
  REQUIRE(t->cpus_near_nic(0).size() == 24);
  REQUIRE(t->cpus_near_nic(1).empty());
  REQUIRE(t->table().find("virtual") != std::string::npos);

  o.xml = "/nonexistent/topology.xml";
  const moefabric::Status s = Topology::load(o, &t);
  REQUIRE(s == moefabric::Status::kInvalidArgument);
  REQUIRE(s.message().find("/nonexistent/topology.xml") != std::string::npos);
}

TEST_CASE("topology: PCI addresses and cpu lists", "[topology]") {
  REQUIRE(PciAddr::parse("0000:4f:00.0")->str() == "0000:4f:00.0");
  REQUIRE(PciAddr::parse("4f:1b.3")->func == 3);
  REQUIRE_FALSE(PciAddr::parse("virtio0").has_value());
  REQUIRE_FALSE(PciAddr::parse("0000:4f:00.0x").has_value());
  REQUIRE(moefabric::topo::cpu_list({0, 1, 2, 3, 8, 10, 11}) == "0-3,8,10-11");
  REQUIRE(moefabric::topo::cpu_list({}) == "-");
}

TEST_CASE("topology: the live machine loads", "[topology]") {
  std::unique_ptr<Topology> t;
  REQUIRE(Topology::load(Options{}, &t).ok());
  REQUIRE(t->cores() >= 1);
  REQUIRE(t->numa_nodes() >= 1);
  REQUIRE_FALSE(t->table().empty());
}

TEST_CASE("topology: where an MoE proxy runs", "[topology]") {
  std::string xml = std::string(MOEFABRIC_SOURCE_ROOT) + "/tests/topology/fixtures/p4d.xml";
  moefabric::topo::NicDesc nic{"rdmap144s27", "efa", PciAddr{0, 0x90, 0x1b, 0}, 100000};
  // No GPU (host backend): every core of the NIC's NUMA node (socket 1: cores 24-47).
  auto cpus = moefabric::topo::proxy_cpus(xml, nic, std::nullopt);
  INFO(cpus.why);
  REQUIRE(moefabric::topo::cpu_list(cpus.cpus) == "24-47");
  REQUIRE(cpus.why.find("NUMA node 1") != std::string::npos);
  // With its GPU: that GPU's slice of its node.
  cpus = moefabric::topo::proxy_cpus(xml, nic, PciAddr{0, 0x90, 0x1d, 0});
  REQUIRE(moefabric::topo::cpu_list(cpus.cpus) == "24-47");  // one GPU given: the whole node is its
  // A virtual NIC says nothing: not pinned, and the reason says so.
  cpus = moefabric::topo::proxy_cpus(xml, {"lo", "tcp", std::nullopt, 0}, std::nullopt);
  REQUIRE(cpus.cpus.empty());
  REQUIRE(cpus.why.find("no NUMA node") != std::string::npos);
  REQUIRE(moefabric::topo::PciAddr::from_sysfs_path("/sys/devices/pci0000:00/0000:00:03.0/virtio0")->str() ==
          "0000:00:03.0");
  REQUIRE_FALSE(moefabric::topo::PciAddr::from_sysfs_path("/sys/devices/virtual/net/lo").has_value());
}

TEST_CASE("topology: GPU rail groups for multi-rail devices", "[topology][rails]") {
  auto descs = [](const Topology& t) {
    std::vector<moefabric::topo::NicDesc> v;
    for (const auto& n : t.nics()) v.push_back(n);
    return v;
  };
  const std::string dir = std::string(MOEFABRIC_SOURCE_ROOT) + "/tests/topology/fixtures/";
  auto p5en = load_fixture("p5en");
  auto g = moefabric::topo::gpu_rail_groups(dir + "p5en.xml", descs(*p5en));
  INFO(g.why);
  REQUIRE(g.groups.size() == 8);  // one device of 2 rails per GPU
  for (size_t i = 0; i < g.groups.size(); ++i) {
    REQUIRE(g.groups[i].size() == 2);
    REQUIRE(g.groups[i] == rails_of(*p5en, static_cast<int>(i)));
  }
  auto p5 = load_fixture("p5");
  g = moefabric::topo::gpu_rail_groups(dir + "p5.xml", descs(*p5));
  REQUIRE(g.groups.size() == 8);
  REQUIRE(g.groups[0].size() == 4);
  auto p4d = load_fixture("p4d");  // two GPUs share each NIC: nothing to group
  g = moefabric::topo::gpu_rail_groups(dir + "p4d.xml", descs(*p4d));
  REQUIRE(g.groups.empty());
  REQUIRE(g.why == "no GPU has two or more rails");
  // Virtual NICs only (this CI machine's lo, veth): hwloc is not even loaded.
  g = moefabric::topo::gpu_rail_groups("",
                                       {{"lo", "tcp", std::nullopt, 0}, {"veth0", "tcp", std::nullopt, 0}});
  REQUIRE(g.groups.empty());
  REQUIRE(g.why == "fewer than two NICs on PCI");
}
