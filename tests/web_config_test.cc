// The exporter's --web.config.file (exporter-toolkit's format): what parses,
// the exact message for each mistake, TLS contexts from certificates made
// here with the openssl tool (and real handshakes through them), and basic
// auth with bcrypt hashes and the legacy plaintext file.
#include <doctest/doctest.h>
#include <openssl/ssl.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "basic_auth.h"
#include "test_support.h"
#include "tls_context.h"
#include "web_config.h"

namespace shmetrics::exporter {
namespace {
using testing::RunCommand;
using testing::ShellQuote;
using testing::TempDir;
using testing::WriteFile;

// Made here with python3's crypt (cost 4, so the tests stay fast).
constexpr const char* kAliceHash = "$2b$04$EbOZHGx8RE/fPZDqweOs1u0.olOQLG8NHxyVATShHnLuoWX2yn1Cy";  // s3cret
constexpr const char* kBobHash = "$2y$04$VGqETuIn5Q3LNqiIYuMPF.Xzk2LGn/M2WELYJ8yvi7YKS5qcZI2Ia";  // hunter2:with:colons

// The message of ParseWebConfig's error for `yaml`, read as the file /etc/x/web.yml.
std::string ParseError(const std::string& yaml) {
  absl::StatusOr<WebConfig> config = ParseWebConfig(yaml, "/etc/x/web.yml");
  REQUIRE_FALSE(config.ok());
  CHECK(config.status().code() == absl::StatusCode::kInvalidArgument);
  return std::string(config.status().message());
}

// A CA, a server certificate and key it signed, a client certificate it
// signed, a self-signed "rogue" client certificate, and a key of no certificate.
void MakeCertificates(const std::string& dir) {
  const std::string key = " -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
  const std::string script = absl::StrCat(
      "set -e; cd ", ShellQuote(dir), "; ",
      "openssl req -x509", key, " -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca; ",
      "for name in server client; do ",
      "openssl req", key, " -keyout $name.key -out $name.csr -subj /CN=$name; ",
      "openssl x509 -req -in $name.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 2 -out $name.crt; done; ",
      "openssl req -x509", key, " -keyout rogue.key -out rogue.crt -days 2 -subj /CN=rogue; ",
      "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key");
  const testing::CommandResult made = RunCommand("(" + script + ") 2>&1");
  INFO(made.output);
  REQUIRE(made.exit_code == 0);
}

// A TLS handshake in memory between a server context and a client (that
// trusts ca.crt, and presents `client_name`.crt unless it is empty). True
// when the server completed it (with TLS 1.3 the server checks a client
// certificate after the client is done, so the server's verdict is the one).
bool Handshake(SSL_CTX* server_ctx, const std::string& dir, const std::string& client_name,
               int client_max_version = 0) {
  SSL_CTX* client_ctx = SSL_CTX_new(TLS_client_method());
  REQUIRE(SSL_CTX_load_verify_locations(client_ctx, (dir + "/ca.crt").c_str(), nullptr) == 1);
  SSL_CTX_set_verify(client_ctx, SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_max_proto_version(client_ctx, client_max_version);
  if (!client_name.empty()) {
    const std::string certificate = dir + "/" + client_name + ".crt", key = dir + "/" + client_name + ".key";
    REQUIRE(SSL_CTX_use_certificate_file(client_ctx, certificate.c_str(), SSL_FILETYPE_PEM) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(client_ctx, key.c_str(), SSL_FILETYPE_PEM) == 1);
  }
  SSL* client = SSL_new(client_ctx);
  SSL* server = SSL_new(server_ctx);
  BIO* client_bio = nullptr;
  BIO* server_bio = nullptr;
  BIO_new_bio_pair(&client_bio, 0, &server_bio, 0);
  SSL_set_bio(client, client_bio, client_bio);
  SSL_set_bio(server, server_bio, server_bio);
  SSL_set_connect_state(client);
  SSL_set_accept_state(server);
  bool client_done = false, server_done = false, failed = false;
  for (int round = 0; round < 20 && !server_done && !failed; ++round) {
    for (SSL* ssl : {client, server}) {
      bool& done = ssl == client ? client_done : server_done;
      if (done || failed) continue;
      const int rc = SSL_do_handshake(ssl);
      const int error = SSL_get_error(ssl, rc);
      done = rc == 1;
      failed = !done && error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE;
    }
  }
  SSL_free(client);
  SSL_free(server);
  SSL_CTX_free(client_ctx);
  ERR_clear_error();
  return server_done && !failed;
}

TEST_CASE("web config: an empty file or {} or a null tls_server_config means no TLS and no auth") {
  for (const char* yaml : {"", "{}", "# nothing yet\n", "tls_server_config:\nbasic_auth_users:\n"}) {
    CAPTURE(yaml);
    absl::StatusOr<WebConfig> config = ParseWebConfig(yaml, "/etc/x/web.yml");
    REQUIRE(config.ok());
    CHECK_FALSE(config->tls.has_value());
    CHECK(config->basic_auth_users.empty());
  }
}

TEST_CASE("web config: every implemented key parses and relative files resolve against the file's directory") {
  absl::StatusOr<WebConfig> config = ParseWebConfig(
      absl::StrCat("tls_server_config:\n"
                   "  cert_file: server.crt\n"
                   "  key_file: ../keys/server.key\n"
                   "  client_auth_type: RequireAndVerifyClientCert\n"
                   "  client_ca_file: /srv/ca.crt\n"
                   "  min_version: TLS13\n"
                   "  max_version: TLS13\n"
                   "  prefer_server_cipher_suites: true\n"
                   "http_server_config:\n"
                   "  http2: false\n"
                   "basic_auth_users:\n"
                   "  zed: ", kAliceHash, "\n"
                   "  bob: '", kBobHash, "'\n"
                   "  al: \"$2a$", std::string(kAliceHash).substr(4), "\"\n"),
      "/etc/x/web.yml");
  REQUIRE(config.ok());
  REQUIRE(config->tls.has_value());
  CHECK(config->tls->cert_file == "/etc/x/server.crt");
  CHECK(config->tls->key_file == "/etc/keys/server.key");
  CHECK(config->tls->client_ca_file == "/srv/ca.crt");
  CHECK(config->tls->client_auth == ClientAuth::kRequireAndVerifyClientCert);
  CHECK(config->tls->min_version == TLS1_3_VERSION);
  CHECK(config->tls->max_version == TLS1_3_VERSION);
  const std::vector<std::pair<std::string, std::string>> users = {
      {"zed", kAliceHash}, {"bob", kBobHash}, {"al", "$2a$" + std::string(kAliceHash).substr(4)}};
  CHECK(config->basic_auth_users == users);

  // Defaults, the older name of RequireAnyClientCert, and a file named without a directory.
  config = ParseWebConfig("tls_server_config: {cert_file: a.crt, key_file: a.key, client_auth_type: RequireClientCert}",
                          "web.yml");
  REQUIRE(config.ok());
  CHECK(config->tls->cert_file == "a.crt");
  CHECK(config->tls->client_auth == ClientAuth::kRequireAnyClientCert);
  CHECK(config->tls->min_version == TLS1_2_VERSION);
  CHECK(config->tls->max_version == 0);
}

TEST_CASE("web config: each mistake gets its exact message") {
  const std::string tls = "tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n";
  CHECK(ParseError(tls + "  certfile: s.crt\n") ==
        "web config /etc/x/web.yml: unknown key \"tls_server_config.certfile\"");
  CHECK(ParseError("tls_config: {}\n") == "web config /etc/x/web.yml: unknown key \"tls_config\"");
  CHECK(ParseError(tls + "  key_file: t.key\n") ==
        "web config /etc/x/web.yml: duplicate key \"tls_server_config.key_file\"");
  CHECK(ParseError(tls + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n") ==
        "web config /etc/x/web.yml: tls_server_config.cipher_suites is not supported by shmetrics-exporter "
        "(OpenSSL's default cipher suites are used)");
  CHECK(ParseError(tls + "  client_allowed_sans: [a.example]\n") ==
        "web config /etc/x/web.yml: tls_server_config.client_allowed_sans is not supported by shmetrics-exporter "
        "(client certificates are not matched by SAN; give the allowed clients a CA of their own and name it in "
        "client_ca_file)");
  CHECK(ParseError("http_server_config:\n  headers: {X-Frame-Options: deny}\n") ==
        "web config /etc/x/web.yml: http_server_config.headers is not supported by shmetrics-exporter "
        "(the exporter sets its own response headers)");
  CHECK(ParseError("rate_limit: {interval: 1s, burst: 20}\n") ==
        "web config /etc/x/web.yml: rate_limit is not supported by shmetrics-exporter "
        "(put a rate-limiting proxy in front of the exporter)");

  const std::string plaintext = ParseError("basic_auth_users:\n  alice: hunter2\n");
  CHECK(plaintext ==
        "web config /etc/x/web.yml: basic_auth_users: the password of user \"alice\" is not a bcrypt hash "
        "($2a$, $2b$ or $2y$, a cost, 53 characters); make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'");
  CHECK_FALSE(absl::StrContains(plaintext, "hunter2"));
  CHECK(ParseError(absl::StrCat("basic_auth_users:\n  alice: \"", std::string(kAliceHash).substr(0, 59), "\"\n")) ==
        absl::StrCat(
            "web config /etc/x/web.yml: basic_auth_users: the password of user \"alice\" is not a bcrypt hash ",
            "($2a$, $2b$ or $2y$, a cost, 53 characters); make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'"));
  CHECK(ParseError(absl::StrCat("basic_auth_users:\n  \"a:b\": ", kAliceHash, "\n")) ==
        "web config /etc/x/web.yml: basic_auth_users: user name \"a:b\" contains ':', which basic auth cannot carry");

  CHECK(ParseError(tls + "  min_version: TLS1.2\n") ==
        "web config /etc/x/web.yml: tls_server_config.min_version \"TLS1.2\" is not one of TLS10, TLS11, TLS12, TLS13");
  CHECK(ParseError(tls + "  max_version: TLS11\n") ==
        "web config /etc/x/web.yml: tls_server_config.min_version TLS12 is above max_version TLS11");
  CHECK(ParseError("tls_server_config:\n  key_file: s.key\n") ==
        "web config /etc/x/web.yml: tls_server_config.cert_file is required");
  CHECK(ParseError("tls_server_config: {}\n") == "web config /etc/x/web.yml: tls_server_config.cert_file is required");
  CHECK(ParseError("tls_server_config:\n  cert_file: s.crt\n") ==
        "web config /etc/x/web.yml: tls_server_config.key_file is required");
  CHECK(ParseError(tls + "  client_auth_type: RequireAndVerifyClientCert\n") ==
        "web config /etc/x/web.yml: tls_server_config.client_ca_file is required with client_auth_type "
        "RequireAndVerifyClientCert");
  CHECK(ParseError(tls + "  client_auth_type: VerifyClientCertIfGiven\n") ==
        "web config /etc/x/web.yml: tls_server_config.client_ca_file is required with client_auth_type "
        "VerifyClientCertIfGiven");
  CHECK(ParseError(tls + "  client_ca_file: ca.crt\n") ==
        "web config /etc/x/web.yml: tls_server_config.client_ca_file is set but client_auth_type is NoClientCert; "
        "set client_auth_type: RequireAndVerifyClientCert");
  CHECK(ParseError(tls + "  client_auth_type: VerifyAlways\n") ==
        "web config /etc/x/web.yml: tls_server_config.client_auth_type \"VerifyAlways\" is not one of NoClientCert, "
        "RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert");
  CHECK(ParseError("tls_server_config:\n  cert_file: [a, b]\n") ==
        "web config /etc/x/web.yml: tls_server_config.cert_file must be a string");
  CHECK(ParseError(tls + "  prefer_server_cipher_suites: maybe\n") ==
        "web config /etc/x/web.yml: tls_server_config.prefer_server_cipher_suites must be true or false");
  CHECK(ParseError("tls_server_config: s.crt\n") ==
        "web config /etc/x/web.yml: tls_server_config must be a mapping of keys to settings");
  CHECK(ParseError("- tls_server_config\n") ==
        "web config /etc/x/web.yml: the file must be a YAML mapping of keys to settings");
  CHECK(ParseError("tls_server_config:\n  cert_file: s.crt\n  key_file: [s.key\n") ==
        "web config /etc/x/web.yml: YAML syntax error at line 4, column 1: end of sequence flow not found");
  CHECK(ParseError("basic_auth_users:\n  alice: x\n bob: y\n") ==
        "web config /etc/x/web.yml: YAML syntax error at line 3, column 2: end of map not found");
}

TEST_CASE("web config: LoadWebConfig refuses a missing config file and certificate files it cannot read") {
  TempDir dir;
  const std::string path = dir.path() + "/web.yml";
  absl::StatusOr<WebConfig> config = LoadWebConfig(path);
  REQUIRE_FALSE(config.ok());
  CHECK(config.status().message() == "web config " + path + ": No such file or directory");
  config = LoadWebConfig(dir.path());
  REQUIRE_FALSE(config.ok());
  CHECK(config.status().message() == "web config " + dir.path() + ": Is a directory");

  WriteFile(path, "tls_server_config:\n  cert_file: server.crt\n  key_file: keys\n");
  config = LoadWebConfig(path);
  REQUIRE_FALSE(config.ok());
  CHECK(config.status().message() ==
        absl::StrCat("web config ", path, ": tls_server_config.cert_file ", dir.path(),
                     "/server.crt: No such file or directory"));
  WriteFile(dir.path() + "/server.crt", "");
  std::filesystem::create_directory(dir.path() + "/keys");
  config = LoadWebConfig(path);
  REQUIRE_FALSE(config.ok());
  CHECK(config.status().message() ==
        "web config " + path + ": tls_server_config.key_file " + dir.path() + "/keys: not a regular file");

  WriteFile(path, "{}\n");
  config = LoadWebConfig(path);
  REQUIRE(config.ok());
  CHECK_FALSE(config->tls.has_value());
}

TEST_CASE("web config TLS: certificates made by openssl load and each client_auth_type admits exactly its clients") {
  TempDir dir;
  MakeCertificates(dir.path());
  const std::string path = dir.path() + "/web.yml";
  const auto context_for = [&](const std::string& tls_lines) {
    WriteFile(path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n" + tls_lines);
    absl::StatusOr<WebConfig> config = LoadWebConfig(path);
    REQUIRE(config.ok());
    REQUIRE(config->tls.has_value());
    absl::StatusOr<std::shared_ptr<boost::asio::ssl::context>> context = MakeTlsContext(*config->tls);
    REQUIRE(context.ok());
    return *std::move(context);
  };

  auto context = context_for("");
  CHECK(Handshake(context->native_handle(), dir.path(), ""));
  CHECK(Handshake(context->native_handle(), dir.path(), "rogue"));  // not asked for, so never sent
  CHECK_FALSE(Handshake(context->native_handle(), dir.path(), "", TLS1_1_VERSION));

  context = context_for("  min_version: TLS13\n");
  CHECK(Handshake(context->native_handle(), dir.path(), ""));
  CHECK_FALSE(Handshake(context->native_handle(), dir.path(), "", TLS1_2_VERSION));

  context = context_for("  client_auth_type: RequestClientCert\n");
  CHECK(Handshake(context->native_handle(), dir.path(), ""));
  CHECK(Handshake(context->native_handle(), dir.path(), "rogue"));

  context = context_for("  client_auth_type: RequireAnyClientCert\n");
  CHECK_FALSE(Handshake(context->native_handle(), dir.path(), ""));
  CHECK(Handshake(context->native_handle(), dir.path(), "rogue"));

  context = context_for("  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n");
  CHECK(Handshake(context->native_handle(), dir.path(), ""));
  CHECK(Handshake(context->native_handle(), dir.path(), "client"));
  CHECK_FALSE(Handshake(context->native_handle(), dir.path(), "rogue"));

  context = context_for("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n");
  CHECK_FALSE(Handshake(context->native_handle(), dir.path(), ""));
  CHECK(Handshake(context->native_handle(), dir.path(), "client"));
  CHECK_FALSE(Handshake(context->native_handle(), dir.path(), "rogue"));
  // TLS 1.2 checks the client's certificate inside the handshake.
  CHECK(Handshake(context->native_handle(), dir.path(), "client", TLS1_2_VERSION));
  CHECK_FALSE(Handshake(context->native_handle(), dir.path(), "rogue", TLS1_2_VERSION));
}

TEST_CASE("web config TLS: a key of another certificate or a file that is not PEM is refused with OpenSSL's reason") {
  TempDir dir;
  MakeCertificates(dir.path());
  TlsSettings tls;
  tls.cert_file = dir.path() + "/server.crt";
  tls.key_file = dir.path() + "/other.key";
  absl::StatusOr<std::shared_ptr<boost::asio::ssl::context>> context = MakeTlsContext(tls);
  REQUIRE_FALSE(context.ok());
  CHECK(context.status().message() == "tls_server_config.key_file " + tls.key_file +
                                          ": does not match the certificate in " + tls.cert_file +
                                          ": error:05800074:x509 certificate routines::key values mismatch");

  tls.key_file = dir.path() + "/server.key";
  tls.cert_file = dir.path() + "/server.csr";
  context = MakeTlsContext(tls);
  REQUIRE_FALSE(context.ok());
  CHECK(context.status().message() == "tls_server_config.cert_file " + tls.cert_file +
                                          ": cannot load the certificate chain: error:0480006C:PEM routines::no "
                                          "start line; error:0A080009:SSL routines::PEM lib");

  tls.cert_file = dir.path() + "/server.crt";
  tls.client_auth = ClientAuth::kRequireAndVerifyClientCert;
  tls.client_ca_file = dir.path() + "/other.key";
  context = MakeTlsContext(tls);
  REQUIRE_FALSE(context.ok());
  CHECK(context.status().message() == "tls_server_config.client_ca_file " + tls.client_ca_file +
                                          ": cannot load the CA certificates: error:05800088:x509 certificate "
                                          "routines::no certificate or crl found");

  // An encrypted key fails instead of prompting for its passphrase.
  const std::string encrypted = dir.path() + "/encrypted.key";
  REQUIRE(RunCommand("openssl pkey -in " + ShellQuote(dir.path() + "/server.key") + " -aes256 -passout pass:pw -out " +
                     ShellQuote(encrypted) + " 2>&1")
              .exit_code == 0);
  tls.client_auth = ClientAuth::kNoClientCert;
  tls.client_ca_file.clear();
  tls.key_file = encrypted;
  context = MakeTlsContext(tls);
  REQUIRE_FALSE(context.ok());
  CHECK(absl::StartsWith(context.status().message(), "tls_server_config.key_file " + encrypted +
                                                         ": cannot load the private key (unencrypted PEM): "));
}

TEST_CASE("web config basic auth: bcrypt users verify and are remembered, unknown users and wrong passwords fail") {
  absl::StatusOr<WebConfig> config = ParseWebConfig(
      absl::StrCat("basic_auth_users:\n  alice: ", kAliceHash, "\n  bob: ", kBobHash, "\n"), "/etc/x/web.yml");
  REQUIRE(config.ok());
  BasicAuth auth = BasicAuth::FromWebConfig(*config);
  CHECK(auth.enabled());

  const Credentials alice{"alice", "s3cret"};
  CHECK_FALSE(auth.VerifiedBefore(alice));
  CHECK(auth.Verify(alice));
  CHECK(auth.VerifiedBefore(alice));
  CHECK(auth.Verify(alice));

  CHECK_FALSE(auth.Verify({"alice", "s3cre"}));
  CHECK_FALSE(auth.VerifiedBefore({"alice", "s3cre"}));
  CHECK_FALSE(auth.Verify({"alice", std::string("s3cret\0x", 8)}));  // crypt(3) would stop at the NUL
  CHECK_FALSE(auth.Verify({"mallory", "s3cret"}));
  CHECK_FALSE(auth.VerifiedBefore({"mallory", "s3cret"}));
  CHECK_FALSE(auth.Verify({"bob", "s3cret"}));

  // $2y$, and a password with ':' in it, through the Authorization header.
  const std::optional<Credentials> bob = ParseBasicAuthorization("Basic Ym9iOmh1bnRlcjI6d2l0aDpjb2xvbnM=");
  REQUIRE(bob.has_value());
  CHECK_FALSE(auth.VerifiedBefore(*bob));
  CHECK(auth.Verify(*bob));
  CHECK(auth.VerifiedBefore(*bob));
  CHECK(auth.VerifiedBefore(alice));

  // The same user and password against another hash is not remembered.
  config = ParseWebConfig(absl::StrCat("basic_auth_users:\n  alice: ", kBobHash, "\n"), "/etc/x/web.yml");
  REQUIRE(config.ok());
  BasicAuth other = BasicAuth::FromWebConfig(*config);
  CHECK_FALSE(other.VerifiedBefore(alice));
  CHECK_FALSE(other.Verify(alice));

  CHECK_FALSE(BasicAuth().enabled());
  CHECK_FALSE(BasicAuth::FromWebConfig(WebConfig{}).enabled());
}

TEST_CASE("web config basic auth: Authorization headers parse only as Basic with base64 of user:password") {
  std::optional<Credentials> credentials = ParseBasicAuthorization("basic YWxpY2U6czNjcmV0");
  REQUIRE(credentials.has_value());
  CHECK(credentials->user == "alice");
  CHECK(credentials->password == "s3cret");
  credentials = ParseBasicAuthorization("BASIC   YWxpY2U6czNjcmV0");
  REQUIRE(credentials.has_value());
  CHECK(credentials->user == "alice");
  credentials = ParseBasicAuthorization("Basic Ym9iOmh1bnRlcjI6d2l0aDpjb2xvbnM=");
  REQUIRE(credentials.has_value());
  CHECK(credentials->user == "bob");
  CHECK(credentials->password == "hunter2:with:colons");
  credentials = ParseBasicAuthorization("Basic OnB3");
  REQUIRE(credentials.has_value());
  CHECK(credentials->user == "");
  CHECK(credentials->password == "pw");

  CHECK_FALSE(ParseBasicAuthorization("Basic YWxpY2U=").has_value());  // "alice": no ':'
  CHECK_FALSE(ParseBasicAuthorization("Basic !!!!").has_value());
  CHECK_FALSE(ParseBasicAuthorization("Basic").has_value());
  CHECK_FALSE(ParseBasicAuthorization("Basic ").has_value());
  CHECK_FALSE(ParseBasicAuthorization("BasicYWxpY2U6czNjcmV0").has_value());
  CHECK_FALSE(ParseBasicAuthorization("Bearer YWxpY2U6czNjcmV0").has_value());
  CHECK_FALSE(ParseBasicAuthorization("").has_value());
}

TEST_CASE("web config basic auth: the legacy --basic-auth-file takes user:password lines with comments and CRLF") {
  TempDir dir;
  const std::string path = dir.path() + "/users";
  WriteFile(path, "# scrapers\r\nprom:pa:ss word\r\n\r\n   \nops:0ps\n");
  absl::StatusOr<BasicAuth> auth = BasicAuth::FromLegacyFile(path);
  REQUIRE(auth.ok());
  CHECK(auth->enabled());
  CHECK(auth->VerifiedBefore({"prom", "pa:ss word"}));
  CHECK(auth->Verify({"prom", "pa:ss word"}));
  CHECK(auth->Verify({"ops", "0ps"}));
  CHECK_FALSE(auth->Verify({"ops", "0ps\r"}));
  CHECK_FALSE(auth->Verify({"ops", "0p"}));
  CHECK_FALSE(auth->VerifiedBefore({"ops", "0p"}));
  CHECK_FALSE(auth->Verify({"# scrapers", ""}));
  CHECK_FALSE(auth->Verify({"nobody", "0ps"}));

  const auto error = [&](const std::string& text) {
    WriteFile(path, text);
    absl::StatusOr<BasicAuth> refused = BasicAuth::FromLegacyFile(path);
    REQUIRE_FALSE(refused.ok());
    return std::string(refused.status().message());
  };
  CHECK(error("ops:0ps\n# next\nprometheus\n") == "basic auth file " + path + ": line 3 is not user:password");
  CHECK(error(":0ps\n") == "basic auth file " + path + ": line 1 has an empty user name");
  CHECK(error("ops:a\nops:b\n") == "basic auth file " + path + ": line 2 repeats user \"ops\"");
  CHECK(error("") == "basic auth file " + path + " holds no user:password line");
  CHECK(error("# only comments\n\n") == "basic auth file " + path + " holds no user:password line");
  absl::StatusOr<BasicAuth> missing = BasicAuth::FromLegacyFile(dir.path() + "/nope");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message() == "basic auth file " + dir.path() + "/nope: No such file or directory");
}

}  // namespace
}  // namespace shmetrics::exporter
