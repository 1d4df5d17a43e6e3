#include "tls_context.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <exception>

#include "absl/strings/str_cat.h"

namespace shmetrics::exporter {
namespace {

// OpenSSL's queued errors, oldest first, joined with "; "; the queue is left empty.
std::string OpenSslErrors() {
  std::string reasons;
  while (const unsigned long error = ERR_get_error()) {
    char text[256];
    ERR_error_string_n(error, text, sizeof text);
    absl::StrAppend(&reasons, reasons.empty() ? "" : "; ", text);
  }
  return reasons.empty() ? "no reason given by OpenSSL" : reasons;
}

absl::Status FileError(absl::string_view key, const std::string& file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tls_server_config.", key, " ", file, ": ", what, ": ",
                                                 OpenSslErrors()));
}

// Answers OpenSSL's passphrase prompt with no passphrase, so an encrypted
// key fails to load instead of reading the terminal.
int NoPassphrase(char*, int, int, void*) { return 0; }

// RequestClientCert, RequireAnyClientCert: any certificate (or none) passes.
int AcceptAnyCertificate(int, X509_STORE_CTX*) { return 1; }

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

}  // namespace

absl::StatusOr<std::shared_ptr<boost::asio::ssl::context>> MakeTlsContext(const TlsSettings& tls) {
  ERR_clear_error();
  std::shared_ptr<boost::asio::ssl::context> context;
  try {
    context = std::make_shared<boost::asio::ssl::context>(boost::asio::ssl::context::tls_server);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot create a TLS context: ", e.what()));
  }
  SSL_CTX* ctx = context->native_handle();
  if (SSL_CTX_set_min_proto_version(ctx, tls.min_version) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, tls.max_version) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("tls_server_config: TLS versions not available: ", OpenSslErrors()));
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(ctx, 0);  // TLS 1.3 would otherwise send tickets
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_default_passwd_cb(ctx, NoPassphrase);

  if (SSL_CTX_use_certificate_chain_file(ctx, tls.cert_file.c_str()) != 1) {
    return FileError("cert_file", tls.cert_file, "cannot load the certificate chain");
  }
  // The key is read here rather than by SSL_CTX_use_PrivateKey_file, which on
  // a mismatch silently drops the certificate and leaves a vaguer error.
  std::unique_ptr<BIO, BioFree> bio(BIO_new_file(tls.key_file.c_str(), "r"));
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr) : nullptr);
  if (key == nullptr) return FileError("key_file", tls.key_file, "cannot load the private key (unencrypted PEM)");
  if (X509_check_private_key(SSL_CTX_get0_certificate(ctx), key.get()) != 1) {
    return FileError("key_file", tls.key_file, absl::StrCat("does not match the certificate in ", tls.cert_file));
  }
  if (SSL_CTX_use_PrivateKey(ctx, key.get()) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return FileError("key_file", tls.key_file, "cannot use the private key");
  }

  if (!tls.client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, tls.client_ca_file.c_str(), nullptr) != 1) {
      return FileError("client_ca_file", tls.client_ca_file, "cannot load the CA certificates");
    }
    // The names sent in the certificate request, so clients pick a matching certificate.
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(tls.client_ca_file.c_str());
    if (names == nullptr) return FileError("client_ca_file", tls.client_ca_file, "cannot read the CA names");
    SSL_CTX_set_client_CA_list(ctx, names);  // takes ownership
  }
  switch (tls.client_auth) {
    case ClientAuth::kNoClientCert:
      SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
      break;
    case ClientAuth::kRequestClientCert:
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, AcceptAnyCertificate);
      break;
    case ClientAuth::kRequireAnyClientCert:
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, AcceptAnyCertificate);
      break;
    case ClientAuth::kVerifyClientCertIfGiven:
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
      break;
    case ClientAuth::kRequireAndVerifyClientCert:
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
      break;
  }
  return context;
}

}  // namespace shmetrics::exporter
