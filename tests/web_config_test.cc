// The exporter's --web.config.file (exporter-toolkit's format): what parses,
// the exact message for each mistake, TLS contexts from certificates made
// here with the openssl tool (and real handshakes through them), and basic
// auth with bcrypt hashes and the legacy plaintext file.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <openssl/ssl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
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
// s3cret again, with another salt (libxcrypt's crypt_gensalt_rn).
constexpr const char* kAliceHashResalted = "$2b$04$q0MTpcnjiQj/gfqIJdB7D.Mouaw4uaYoNdHk6LaocuTaSR7kYf8f2";

// The message of ParseWebConfig's error for `yaml`, read as the file /etc/x/web.yml.
std::string ParseError(const std::string& yaml) {
  absl::StatusOr<WebConfig> config = ParseWebConfig(yaml, "/etc/x/web.yml");
  REQUIRE_FALSE(config.ok());
  CHECK(config.status().code() == absl::StatusCode::kInvalidArgument);
  return std::string(config.status().message());
}

// The message of `read()`'s status. It runs on a thread of its own: should it
// block on the FIFO `fifo`, the test fails after 5 s instead of hanging, and
// a writer opened on the FIFO lets the read go.
std::string MessageUnlessBlocked(const std::string& fifo, const std::function<absl::Status()>& read) {
  std::future<absl::Status> done = std::async(std::launch::async, read);
  if (done.wait_for(std::chrono::seconds(5)) == std::future_status::timeout) {
    FAIL_CHECK("still blocked on the FIFO " << fifo << " after 5 s");
    const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) ::close(fd);
  }
  return std::string(done.get().message());
}

BasicAuth AuthFor(const std::string& users_yaml) {
  absl::StatusOr<WebConfig> config = ParseWebConfig("basic_auth_users:\n" + users_yaml, "/etc/x/web.yml");
  REQUIRE(config.ok());
  return BasicAuth::FromWebConfig(*config);
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
        "web config /etc/x/web.yml: tls_server_config.min_version \"TLS1.2\" is not one of TLS12, TLS13");
  CHECK(ParseError(tls + "  min_version: TLS13\n  max_version: TLS12\n") ==
        "web config /etc/x/web.yml: tls_server_config.min_version TLS13 is above max_version TLS12");
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

TEST_CASE("web config: TLS10 and TLS11 are refused, as min_version or max_version, with the reason") {
  const std::string tls = "tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n";
  for (const char* key : {"min_version", "max_version"}) {
    for (const char* version : {"TLS10", "TLS11"}) {
      CAPTURE(key);
      CAPTURE(version);
      CHECK(ParseError(absl::StrCat(tls, "  ", key, ": ", version, "\n")) ==
            absl::StrCat("web config /etc/x/web.yml: tls_server_config.", key, " ", version,
                         " is refused: OpenSSL 3 no longer negotiates TLS 1.0 or 1.1 at its default security level; "
                         "use TLS12 or TLS13"));
    }
  }
}

TEST_CASE("web config: bcrypt costs above 16 or below 4 are refused, naming the user and never the hash") {
  const auto with_cost = [](const char* cost) { return absl::StrCat("$2b$", cost, std::string(kAliceHash).substr(6)); };
  for (const char* cost : {"17", "31", "99"}) {
    CAPTURE(cost);
    const std::string message = ParseError(absl::StrCat("basic_auth_users:\n  alice: ", kBobHash, "\n  bob: ",
                                                        with_cost(cost), "\n"));
    CHECK(message == absl::StrCat("web config /etc/x/web.yml: basic_auth_users: the bcrypt hash of user \"bob\" has "
                                  "cost ", cost, "; costs above 16 are refused, as every check would take seconds or "
                                  "more (10 to 12 is usual)"));
    CHECK_FALSE(absl::StrContains(message, std::string(kAliceHash).substr(7)));
  }
  CHECK(ParseError(absl::StrCat("basic_auth_users:\n  alice: ", with_cost("03"), "\n")) ==
        "web config /etc/x/web.yml: basic_auth_users: the bcrypt hash of user \"alice\" has cost 3, below bcrypt's "
        "minimum of 4");
  CHECK(ParseWebConfig(absl::StrCat("basic_auth_users:\n  alice: ", with_cost("16"), "\n"), "/etc/x/web.yml").ok());
}

TEST_CASE("web config: the shipped deploy/web-config.yml is refused until its placeholder is a bcrypt hash") {
  const std::string shipped = testing::ReadFile(SHMETRICS_TESTS_DIR "/../deploy/web-config.yml");
  REQUIRE(absl::StrContains(shipped, "REPLACE_WITH_A_BCRYPT_HASH"));
  CHECK(ParseError(shipped) ==
        "web config /etc/x/web.yml: basic_auth_users: the password of user \"prometheus\" is not a bcrypt hash "
        "($2a$, $2b$ or $2y$, a cost, 53 characters); make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'");

  const absl::StatusOr<WebConfig> config =
      ParseWebConfig(absl::StrReplaceAll(shipped, {{"REPLACE_WITH_A_BCRYPT_HASH", kAliceHash}}), "/etc/x/web.yml");
  REQUIRE(config.ok());
  REQUIRE(config->tls.has_value());
  CHECK(config->tls->cert_file == "/etc/shmetrics/tls/server.crt");
  const std::vector<std::pair<std::string, std::string>> users = {{"prometheus", kAliceHash}};
  CHECK(config->basic_auth_users == users);
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
        "web config " + path + ": tls_server_config.key_file " + dir.path() + "/keys: Is a directory");

  WriteFile(path, "{}\n");
  config = LoadWebConfig(path);
  REQUIRE(config.ok());
  CHECK_FALSE(config->tls.has_value());
}

TEST_CASE("web config files: a FIFO, /dev/zero or a file over 1 MiB is refused at once as config, cert, key or CA") {
  TempDir dir;
  MakeCertificates(dir.path());
  const std::string fifo = dir.path() + "/fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const std::string big = dir.path() + "/big";
  WriteFile(big, std::string(2 << 20, '#'));
  const std::string zero_link = dir.path() + "/zero";
  std::filesystem::create_symlink("/dev/zero", zero_link);

  const auto load_error = [&](const std::string& path) {
    return MessageUnlessBlocked(fifo, [path] { return LoadWebConfig(path).status(); });
  };
  CHECK(load_error(fifo) == "web config " + fifo + ": not a regular file");
  CHECK(load_error("/dev/zero") == "web config /dev/zero: not a regular file");
  CHECK(load_error(zero_link) == "web config " + zero_link + ": not a regular file");
  CHECK(load_error(big) == "web config " + big + ": larger than the limit of 1 MiB");
  CHECK(MessageUnlessBlocked(fifo, [&] { return BasicAuth::FromLegacyFile(fifo).status(); }) ==
        "basic auth file " + fifo + ": not a regular file");

  // MakeTlsContext reads the files itself: one swapped for a FIFO after LoadWebConfig looked is refused too.
  const std::string path = dir.path() + "/web.yml";
  for (const std::string& bad : {fifo, zero_link, big}) {
    for (const std::string key : {"cert_file", "key_file", "client_ca_file"}) {
      CAPTURE(bad);
      CAPTURE(key);
      TlsSettings tls;
      tls.cert_file = key == "cert_file" ? bad : dir.path() + "/server.crt";
      tls.key_file = key == "key_file" ? bad : dir.path() + "/server.key";
      tls.client_ca_file = key == "client_ca_file" ? bad : dir.path() + "/ca.crt";
      tls.client_auth = ClientAuth::kRequireAndVerifyClientCert;
      const std::string problem = bad == big ? "larger than the limit of 1 MiB" : "not a regular file";
      CHECK(MessageUnlessBlocked(fifo, [&] { return MakeTlsContext(tls).status(); }) ==
            absl::StrCat("tls_server_config.", key, " ", bad, ": ", problem));
      WriteFile(path, absl::StrCat("tls_server_config:\n  cert_file: ", tls.cert_file, "\n  key_file: ", tls.key_file,
                                   "\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ",
                                   tls.client_ca_file, "\n"));
      CHECK(load_error(path) ==
            absl::StrCat("web config ", path, ": tls_server_config.", key, " ", bad, ": ", problem));
    }
  }
}

TEST_CASE("web config files: exactly 1 MiB is read, through symbolic links as Kubernetes mounts a ConfigMap") {
  TempDir dir;
  std::filesystem::create_directory(dir.path() + "/..2024_01_01");
  std::filesystem::create_directory_symlink("..2024_01_01", dir.path() + "/..data");
  std::filesystem::create_symlink("..data/web.yml", dir.path() + "/web.yml");
  const std::string users = absl::StrCat("basic_auth_users:\n  alice: ", kAliceHash, "\n#");
  const std::string text = users + std::string((1 << 20) - users.size() - 1, '#') + "\n";
  REQUIRE(text.size() == 1 << 20);
  WriteFile(dir.path() + "/..2024_01_01/web.yml", text);
  absl::StatusOr<WebConfig> config = LoadWebConfig(dir.path() + "/web.yml");
  REQUIRE(config.ok());
  REQUIRE(config->basic_auth_users.size() == 1);
  CHECK(config->basic_auth_users[0].first == "alice");

  WriteFile(dir.path() + "/..2024_01_01/web.yml", text + "\n");
  config = LoadWebConfig(dir.path() + "/web.yml");
  REQUIRE_FALSE(config.ok());
  CHECK(config.status().message() == "web config " + dir.path() + "/web.yml: larger than the limit of 1 MiB");
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
  STACK_OF(X509)* chain = nullptr;
  REQUIRE(SSL_CTX_get0_chain_certs(context->native_handle(), &chain) == 1);
  CHECK((chain == nullptr || sk_X509_num(chain) == 0));

  // The certificates after the first in cert_file are its chain.
  TlsSettings chained;
  chained.cert_file = dir.path() + "/chain.crt";
  chained.key_file = dir.path() + "/server.key";
  WriteFile(chained.cert_file,
            testing::ReadFile(dir.path() + "/server.crt") + testing::ReadFile(dir.path() + "/ca.crt"));
  absl::StatusOr<std::shared_ptr<boost::asio::ssl::context>> with_chain = MakeTlsContext(chained);
  REQUIRE(with_chain.ok());
  REQUIRE(SSL_CTX_get0_chain_certs((*with_chain)->native_handle(), &chain) == 1);
  CHECK(sk_X509_num(chain) == 1);
  CHECK(Handshake((*with_chain)->native_handle(), dir.path(), ""));
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
                                          "start line");

  tls.cert_file = dir.path() + "/server.crt";
  tls.client_auth = ClientAuth::kRequireAndVerifyClientCert;
  tls.client_ca_file = dir.path() + "/other.key";
  context = MakeTlsContext(tls);
  REQUIRE_FALSE(context.ok());
  CHECK(context.status().message() == "tls_server_config.client_ca_file " + tls.client_ca_file +
                                          ": cannot load the CA certificates: no PEM certificate in it");

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

TEST_CASE("web config basic auth: failed credentials are remembered for FailedBefore and the right ones still verify") {
  BasicAuth auth = AuthFor(absl::StrCat("  alice: ", kAliceHash, "\n"));
  const Credentials wrong{"alice", "s3cre"};
  CHECK_FALSE(auth.FailedBefore(wrong));
  CHECK_FALSE(auth.Verify(wrong));
  CHECK(auth.FailedBefore(wrong));
  CHECK_FALSE(auth.VerifiedBefore(wrong));
  CHECK_FALSE(auth.Verify(wrong));  // answered from memory
  CHECK(auth.FailedBefore(wrong));

  const Credentials right{"alice", "s3cret"};
  CHECK_FALSE(auth.FailedBefore(right));
  CHECK(auth.Verify(right));
  CHECK_FALSE(auth.FailedBefore(right));
  CHECK(auth.VerifiedBefore(right));

  // An unknown user, and a password that only crypt(3) would read as the right one.
  const Credentials unknown{"mallory", "s3cret"}, with_nul{"alice", std::string("s3cret\0x", 8)};
  for (const Credentials& refused : {unknown, with_nul}) {
    CAPTURE(refused.user);
    CHECK_FALSE(auth.FailedBefore(refused));
    CHECK_FALSE(auth.Verify(refused));
    CHECK(auth.FailedBefore(refused));
  }
  CHECK(auth.Verify(right));
  CHECK_FALSE(auth.FailedBefore(right));

  // Plaintext users are checked at once: nothing to remember.
  TempDir dir;
  WriteFile(dir.path() + "/users", "ops:0ps\n");
  absl::StatusOr<BasicAuth> legacy = BasicAuth::FromLegacyFile(dir.path() + "/users");
  REQUIRE(legacy.ok());
  CHECK_FALSE(legacy->Verify({"ops", "0p"}));
  CHECK_FALSE(legacy->FailedBefore({"ops", "0p"}));
  CHECK_FALSE(legacy->Verify({"nobody", "0p"}));
  CHECK_FALSE(legacy->FailedBefore({"nobody", "0p"}));
}

TEST_CASE("web config basic auth: InheritVerified carries both verdicts to a reload, but not for a changed hash") {
  const std::string users = absl::StrCat("  alice: ", kAliceHash, "\n  bob: ", kBobHash, "\n");
  BasicAuth previous = AuthFor(users);
  const Credentials alice{"alice", "s3cret"}, bob{"bob", "hunter2:with:colons"}, wrong{"alice", "s3cre"},
      mallory{"mallory", "s3cret"};
  REQUIRE(previous.Verify(alice));
  REQUIRE(previous.Verify(bob));
  REQUIRE_FALSE(previous.Verify(wrong));
  REQUIRE_FALSE(previous.Verify(mallory));

  BasicAuth same = AuthFor(users);
  CHECK_FALSE(same.VerifiedBefore(alice));
  CHECK_FALSE(same.FailedBefore(wrong));
  same.InheritVerified(previous);
  CHECK(same.VerifiedBefore(alice));
  CHECK(same.VerifiedBefore(bob));
  CHECK(same.FailedBefore(wrong));
  CHECK(same.FailedBefore(mallory));
  same.InheritVerified(same);
  CHECK(same.VerifiedBefore(alice));

  // alice's password hashed anew: nothing remembered of her matches, so bcrypt decides again.
  BasicAuth rehashed = AuthFor(absl::StrCat("  alice: ", kAliceHashResalted, "\n  bob: ", kBobHash, "\n"));
  rehashed.InheritVerified(previous);
  CHECK_FALSE(rehashed.VerifiedBefore(alice));
  CHECK_FALSE(rehashed.FailedBefore(wrong));
  CHECK(rehashed.VerifiedBefore(bob));
  CHECK(rehashed.Verify(alice));

  // mallory added (with the password she tried) and bob removed.
  BasicAuth changed = AuthFor(absl::StrCat("  alice: ", kAliceHash, "\n  mallory: ", kAliceHash, "\n"));
  changed.InheritVerified(previous);
  CHECK_FALSE(changed.FailedBefore(mallory));
  CHECK(changed.Verify(mallory));
  CHECK_FALSE(changed.VerifiedBefore(bob));
  CHECK(changed.VerifiedBefore(alice));

  // The previous instance stays in use by other threads meanwhile.
  std::atomic<bool> stop{false};
  bool answers_held = true;
  std::thread user([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      answers_held &= previous.Verify(alice) && previous.FailedBefore(wrong);
    }
  });
  for (int i = 0; i < 100; ++i) {
    BasicAuth next = AuthFor(users);
    next.InheritVerified(previous);
    CHECK(next.VerifiedBefore(bob));
  }
  stop.store(true, std::memory_order_relaxed);
  user.join();
  CHECK(answers_held);
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
