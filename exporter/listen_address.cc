#include "listen_address.h"

#include <arpa/inet.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace shmetrics::exporter {
namespace {

absl::Status Invalid(absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("listen address \"", text, "\": ", why));
}

bool ParsePort(absl::string_view text, uint16_t* port) {
  uint32_t value = 0;
  if (text.empty() || text.size() > 5 || !absl::SimpleAtoi(text, &value) || value == 0 || value > 65535) return false;
  for (char ch : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(ch))) return false;
  }
  *port = static_cast<uint16_t>(value);
  return true;
}

}  // namespace

absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view text) {
  ListenAddress address;
  absl::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == absl::string_view::npos) return Invalid(text, "no ']' after an IPv6 address");
    if (close + 1 >= text.size() || text[close + 1] != ':') return Invalid(text, "expected [ADDRESS]:PORT");
    address.host = std::string(text.substr(1, close - 1));
    if (address.host.empty()) return Invalid(text, "empty IPv6 address");
    port_text = text.substr(close + 2);
  } else if (const size_t colon = text.rfind(':'); colon != absl::string_view::npos) {
    if (text.find(':') != colon) return Invalid(text, "an IPv6 address goes in brackets: [ADDRESS]:PORT");
    address.host = std::string(text.substr(0, colon));
    port_text = text.substr(colon + 1);
  } else {
    port_text = text;
  }
  if (!ParsePort(port_text, &address.port)) {
    return Invalid(text, absl::StrCat("\"", port_text, "\" is not a port (1-65535)"));
  }
  if (address.host.empty()) {
    address.host = "127.0.0.1";
    address.bare_port = true;
  }
  // "0", "127.1": getaddrinfo reads them as 0.0.0.0 and 127.0.0.1; an
  // address that is not written out whole is more likely a mistake.
  in_addr ipv4;
  if (address.host.find_first_not_of("0123456789.") == std::string::npos &&
      inet_pton(AF_INET, address.host.c_str(), &ipv4) != 1) {
    return Invalid(text, absl::StrCat("\"", address.host, "\" is not an IPv4 address (write all four parts)"));
  }
  return address;
}

std::string FormatEndpoint(const std::string& ip, uint16_t port) {
  if (ip.find(':') != std::string::npos) return absl::StrCat("[", ip, "]:", port);
  return absl::StrCat(ip, ":", port);
}

}  // namespace shmetrics::exporter
