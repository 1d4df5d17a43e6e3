// The exporter's TLS server context, made from a web config's
// tls_server_config (web_config.h) with OpenSSL through Boost.Asio.
//
//   absl::StatusOr<std::shared_ptr<boost::asio::ssl::context>> context = MakeTlsContext(*config->tls);
//   if (!context.ok()) { print context.status().message(); exit }
//   boost::asio::ssl::stream<tcp::socket> stream(std::move(socket), **context);
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <memory>

#include "absl/status/statusor.h"
#include "web_config.h"

namespace shmetrics::exporter {

// A TLS server context: the protocol versions of `tls`, its certificate
// chain and private key (checked to match), and client certificates as its
// ClientAuth says (RequestClientCert and RequireAnyClientCert accept any
// certificate; the Verify* modes verify against client_ca_file). No
// compression, no renegotiation, no session resumption. An error names the
// file and key at fault and carries OpenSSL's reasons. Encrypted keys are
// refused (never prompts for a passphrase). The files are read as
// ReadSmallRegularFile does (web_config.h), so a FIFO or device in their
// place is refused rather than waited on.
//
// The context is thread-compatible while being set up here, then safe to
// share: OpenSSL allows any number of connections to use it at once.
absl::StatusOr<std::shared_ptr<boost::asio::ssl::context>> MakeTlsContext(const TlsSettings& tls);

}  // namespace shmetrics::exporter
