#include "tls_context.h"

#include <openssl/crypto.h>
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

// The file's PEM text, read here rather than by OpenSSL, which opens files
// in blocking mode: a FIFO put in the place of a certificate after
// LoadWebConfig checked it would hang the caller.
absl::StatusOr<std::string> ReadPem(absl::string_view key, const std::string& file) {
  absl::StatusOr<std::string> text = ReadSmallRegularFile(file);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls_server_config.", key, " ", file, ": ", text.status().message()));
  }
  return text;
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
struct X509Free {
  void operator()(X509* certificate) const { X509_free(certificate); }
};
struct InfosFree {
  void operator()(STACK_OF(X509_INFO) * infos) const { sk_X509_INFO_pop_free(infos, X509_INFO_free); }
};

std::unique_ptr<BIO, BioFree> MemoryBio(const std::string& text) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// SSL_CTX_use_certificate_chain_file's work, from memory: the first
// certificate is the server's, the rest its chain.
bool UseCertificateChain(SSL_CTX* ctx, const std::string& pem) {
  std::unique_ptr<BIO, BioFree> bio = MemoryBio(pem);
  std::unique_ptr<X509, X509Free> leaf(bio ? PEM_read_bio_X509_AUX(bio.get(), nullptr, NoPassphrase, nullptr)
                                           : nullptr);
  if (leaf == nullptr || SSL_CTX_use_certificate(ctx, leaf.get()) != 1 || SSL_CTX_clear_chain_certs(ctx) != 1) {
    return false;
  }
  while (X509* intermediate = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) {
    if (SSL_CTX_add0_chain_cert(ctx, intermediate) != 1) {
      X509_free(intermediate);
      return false;
    }
  }
  // Running out of certificates ends with "no start line"; any other error is a broken one.
  const unsigned long last = ERR_peek_last_error();
  if (ERR_GET_LIB(last) != ERR_LIB_PEM || ERR_GET_REASON(last) != PEM_R_NO_START_LINE) return false;
  ERR_clear_error();
  return true;
}

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

  absl::StatusOr<std::string> cert_pem = ReadPem("cert_file", tls.cert_file);
  if (!cert_pem.ok()) return cert_pem.status();
  if (!UseCertificateChain(ctx, *cert_pem)) {
    return FileError("cert_file", tls.cert_file, "cannot load the certificate chain");
  }
  absl::StatusOr<std::string> key_pem = ReadPem("key_file", tls.key_file);
  if (!key_pem.ok()) return key_pem.status();
  std::unique_ptr<BIO, BioFree> bio = MemoryBio(*key_pem);
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr) : nullptr);
  bio.reset();
  OPENSSL_cleanse(key_pem->data(), key_pem->size());
  if (key == nullptr) return FileError("key_file", tls.key_file, "cannot load the private key (unencrypted PEM)");
  // Checked here: SSL_CTX_use_PrivateKey on a mismatch silently drops the
  // certificate and leaves a vaguer error.
  if (X509_check_private_key(SSL_CTX_get0_certificate(ctx), key.get()) != 1) {
    return FileError("key_file", tls.key_file, absl::StrCat("does not match the certificate in ", tls.cert_file));
  }
  if (SSL_CTX_use_PrivateKey(ctx, key.get()) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return FileError("key_file", tls.key_file, "cannot use the private key");
  }

  if (!tls.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca_pem = ReadPem("client_ca_file", tls.client_ca_file);
    if (!ca_pem.ok()) return ca_pem.status();
    bio = MemoryBio(*ca_pem);
    std::unique_ptr<STACK_OF(X509_INFO), InfosFree> infos(
        bio ? PEM_X509_INFO_read_bio(bio.get(), nullptr, NoPassphrase, nullptr) : nullptr);
    if (infos == nullptr) return FileError("client_ca_file", tls.client_ca_file, "cannot load the CA certificates");
    int certificates = 0;
    for (int i = 0; i < sk_X509_INFO_num(infos.get()); ++i) {
      X509* ca = sk_X509_INFO_value(infos.get(), i)->x509;
      if (ca == nullptr) continue;
      // The store verifies client certificates; the list names the CAs in
      // the certificate request, so clients pick a matching certificate.
      if (X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca) != 1 || SSL_CTX_add_client_CA(ctx, ca) != 1) {
        return FileError("client_ca_file", tls.client_ca_file, "cannot load the CA certificates");
      }
      ++certificates;
    }
    if (certificates == 0) {
      return absl::InvalidArgumentError(absl::StrCat("tls_server_config.client_ca_file ", tls.client_ca_file,
                                                     ": cannot load the CA certificates: no PEM certificate in it"));
    }
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
