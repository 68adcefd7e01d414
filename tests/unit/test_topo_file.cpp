#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "plugin/nccl/topo_file.h"

using namespace moefabric;
using namespace moefabric::fabric;

namespace {
size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}
}  // namespace

TEST_CASE("topo file: grouped NICs appear as one net under the first rail's PCI path", "[topo_file]") {
  TopoNet a;
  a.name = "mlx5_0+mlx5_1";
  a.dev = 0;
  a.speed_mbps = 400000;
  a.latency_us = 10;
  a.guid = 0xabc;
  a.maxconn = 65535;
  a.gdr = true;
  a.numa = 1;
  a.pci = {{"0000:40:01.0", "0x060400", "", "", "", ""},
           {"0000:41:00.0", "0x060400", "", "", "", ""},
           {"0000:43:00.0", "0x020700", "0x15b3", "0x101b", "16.0 GT/s PCIe", "16"}};
  TopoNet b = a;  // second device behind the same switch
  b.name = "mlx5_2+mlx5_3";
  b.dev = 1;
  b.guid = 0xdef;
  b.pci.back().busid = "0000:44:00.0";
  TopoNet v;  // virtual NIC: on the CPU itself
  v.name = "veth0a+veth1a";
  v.dev = 2;
  v.speed_mbps = 20000;
  TopoCpu host;
  host.arch = "x86_64";
  host.vendor = "GenuineIntel";
  host.family = 6;
  host.model = 207;
  host.affinity[1] = "ffff0000";
  std::string xml = nccl_topo_xml({a, b, v}, host);
  INFO(xml);
  REQUIRE(xml.rfind("<system version=\"1\">\n", 0) == 0);
  REQUIRE(xml.find("</system>") != std::string::npos);
  REQUIRE(count(xml, "<cpu ") == 2);  // NUMA 1 (PCI NICs) and -1 (the virtual one: unknown)
  // Every attribute NCCL requires of an x86 <cpu> it did not create itself.
  REQUIRE(xml.find("<cpu numaid=\"1\" affinity=\"ffff0000\" arch=\"x86_64\" vendor=\"GenuineIntel\" "
                   "familyid=\"6\" modelid=\"207\">") != std::string::npos);
  REQUIRE(xml.find("<cpu numaid=\"-1\" arch=\"x86_64\" vendor=\"GenuineIntel\" familyid=\"6\" "
                   "modelid=\"207\">") != std::string::npos);
  REQUIRE(count(xml, "busid=\"0000:40:01.0\"") == 1);  // shared bridges appear once
  REQUIRE(count(xml, "busid=\"0000:41:00.0\"") == 1);
  REQUIRE(count(xml, "<pci ") == 4);
  REQUIRE(count(xml, "</pci>") == 4);
  REQUIRE(count(xml, "<net ") == 3);
  REQUIRE(xml.find("<net name=\"mlx5_0+mlx5_1\" dev=\"0\" speed=\"400000\" port=\"1\" "
                   "latency=\"10.000000\" guid=\"0xabc\" maxconn=\"65535\" gdr=\"1\"/>") !=
          std::string::npos);
  REQUIRE(xml.find("link_speed=\"16.0 GT/s PCIe\" link_width=\"16\"") != std::string::npos);
  // The net sits inside its NIC function: <pci 43:00.0 ...> <nic> <net mlx5_0+mlx5_1>.
  size_t fn = xml.find("busid=\"0000:43:00.0\""), net = xml.find("name=\"mlx5_0+mlx5_1\"");
  size_t fn2 = xml.find("busid=\"0000:44:00.0\"");
  REQUIRE(fn < net);
  REQUIRE(net < fn2);
  // Unknown attributes are left out (NCCL fills them from sysfs), not written empty, except the
  // link attributes NCCL requires of every <pci> it reads: speed "" and width "0" when unknown.
  REQUIRE(count(xml, "=\"\"") == 2);  // the two bridges
  REQUIRE(count(xml, "link_speed=\"\" link_width=\"0\"") == 2);
  size_t cpu0 = xml.find("<cpu numaid=\"-1\""), vnet = xml.find("name=\"veth0a+veth1a\"");
  REQUIRE(cpu0 < vnet);
  // Names are escaped.
  TopoNet odd = v;
  odd.name = "a<b>&\"c";
  REQUIRE(nccl_topo_xml({odd}, TopoCpu{}).find("name=\"a&lt;b&gt;&amp;&quot;c\"") != std::string::npos);
}

TEST_CASE("topo file: this host's CPU as NCCL describes it", "[topo_file]") {
  TopoCpu c = topo_host_cpu();
  REQUIRE(!c.arch.empty());
#if defined(__x86_64__)
  // NCCL's kvDictCpuVendor knows these; anything else would still be written, but this CI runs
  // on one of them.
  REQUIRE((c.vendor == "GenuineIntel" || c.vendor == "AuthenticAMD" || c.vendor == "CentaurHauls" ||
           c.vendor == "  Shanghai  " || c.vendor == "HygonGenuine"));
  REQUIRE(c.family > 0);
  REQUIRE(c.model >= 0);
#endif
  if (access("/sys/devices/system/node/node0/cpumap", R_OK) == 0) {
    REQUIRE(c.affinity.count(0) == 1);
    REQUIRE(c.affinity[0].find_first_not_of("0123456789abcdef,") == std::string::npos);
  }
}

TEST_CASE("topo file: PCI chain from a sysfs path", "[topo_file]") {
  auto chain = topo_pci_chain("/sys/devices/pci0000:00/0000:00:1C.0/0000:03:00.0/net/eth9");
  REQUIRE(chain.size() == 2);
  REQUIRE(chain[0].busid == "0000:00:1c.0");  // lower case, as NCCL writes bus ids
  REQUIRE(chain[1].busid == "0000:03:00.0");
  REQUIRE(topo_pci_chain("/sys/devices/virtual/net/lo").empty());
}

TEST_CASE("topo file: memfd install respects a user's NCCL_TOPO_FILE", "[topo_file]") {
  setenv("NCCL_TOPO_FILE", "/etc/mine.xml", 1);
  TopoInstall installed;
  installed.fd = -2;
  REQUIRE(nccl_topo_install("<system/>", &installed).ok());
  REQUIRE(installed.fd == -1);
  REQUIRE(std::string(getenv("NCCL_TOPO_FILE")) == "/etc/mine.xml");
  unsetenv("NCCL_TOPO_FILE");
  REQUIRE(nccl_topo_install("<system version=\"1\"/>\n", &installed).ok());
  const int fd = installed.fd;
  REQUIRE(fd >= 0);
  const char* path = getenv("NCCL_TOPO_FILE");
  REQUIRE(path != nullptr);
  REQUIRE(std::string(path) == "/proc/self/fd/" + std::to_string(fd));
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  REQUIRE(ss.str() == "<system version=\"1\"/>\n");
  nccl_topo_uninstall(fd);
  REQUIRE(getenv("NCCL_TOPO_FILE") == nullptr);
}
