// The service kit: exact values after scripted traffic.
#include <doctest/doctest.h>

#include <stdexcept>

#include "shmetrics/service_kit.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::TempDir;

TEST_CASE("kit: scripted traffic gives exact counts, durations, in-progress, cache, db, LLM and ring records") {
  TempDir dir;
  WriterOptions writer_options = testing::WriterIn(dir, "shop");
  auto writer = Writer::Create(writer_options).value();
  ServiceKitOptions options;
  options.app_name = "shop";
  options.version = "1.2.3";
  options.environment = "test";
  options.max_endpoints = 3;
  options.llm_price_per_1k_tokens = {{"gemini-pro", 0.5}};
  auto kit = ServiceKit::Create(*writer, options).value();

  for (int i = 0; i < 3; ++i) kit->StartRequest("GET", "/users");  // 200 by default
  {
    auto request = kit->StartRequest("POST", "/orders");
    request.set_status(201);
    request.set_response_bytes(99);
  }
  {
    auto request = kit->StartRequest("POST", "/orders");
    request.set_status(502);
    request.set_error("payment gateway down");
  }
  CHECK_THROWS_AS(([&] {
                    auto request = kit->StartRequest("GET", "/users");
                    throw std::runtime_error("boom");
                  }()),
                  std::runtime_error);
  kit->record_llm_usage("/chat", "gemini-pro", 2000, std::nullopt, "success");  // the third endpoint
  kit->StartRequest("GET", "/a");  // the fourth and fifth distinct endpoints: "other"
  kit->StartRequest("GET", "/b");
  auto open = kit->StartRequest("GET", "/users");  // still in progress while we read

  for (int i = 0; i < 3; ++i) kit->record_cache_event(true);
  kit->record_cache_event(false);
  kit->record_db_query("select", 0.002);
  kit->record_db_query("select", 0.2);
  { auto timer = kit->TimeDbQuery("insert"); }
  kit->db_connections_active().inc(3);
  kit->concurrent_users().set(42);
  kit->record_llm_usage("/chat", "gemini-pro", 100, 0.25, "error");

  testing::Totals totals;
  auto segment = reader::Segment::Open(writer->path()).value();
  testing::AddSegment(*segment, totals);
  CHECK(totals.scalars.at("http_requests_total{GET,/users,200}") == 3);
  CHECK(totals.scalars.at("http_requests_total{POST,/orders,201}") == 1);
  CHECK(totals.scalars.at("http_requests_total{POST,/orders,502}") == 1);
  CHECK(totals.scalars.at("http_requests_total{GET,/users,500}") == 1);  // the exception
  CHECK(totals.scalars.at("http_requests_total{GET,other,200}") == 2);
  CHECK_FALSE(totals.scalars.contains("http_requests_total{GET,/a,200}"));
  CHECK(totals.scalars.at("http_requests_in_progress{GET,/users}") == 1);  // `open`
  CHECK(totals.scalars.at("http_requests_in_progress{POST,/orders}") == 0);
  uint64_t users_observations = 0;
  for (uint64_t b : totals.buckets.at("http_request_duration_seconds{GET,/users}")) users_observations += b;
  CHECK(users_observations == 4);
  CHECK(totals.scalars.at("cache_operations_total{get,hit}") == 3);
  CHECK(totals.scalars.at("cache_operations_total{get,miss}") == 1);
  CHECK(totals.buckets.at("db_query_duration_seconds{select}") ==
        std::vector<uint64_t>{0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0});
  CHECK(totals.scalars.at("db_connections_active{}") == 3);
  CHECK(totals.scalars.at("concurrent_users{}") == 42);
  CHECK(totals.scalars.at("gemini_tokens_total{/chat,gemini-pro}") == 2100);
  CHECK(totals.scalars.at("gemini_api_cost_dollars_total{/chat,gemini-pro}") == 1.25);
  CHECK(totals.scalars.at("gemini_api_calls_total{/chat,gemini-pro,success}") == 1);
  CHECK(totals.scalars.at("gemini_api_calls_total{/chat,gemini-pro,error}") == 1);
  // An Info family: its series is there; the exposition shows application_info ... 1.
  CHECK(totals.scalars.count("application{shop,1.2.3,test}") == 1);

  const auto errors = segment->ReadRing(0, reader::RingKind::kErrors, 0);
  REQUIRE(errors.records.size() == 2);
  CHECK(errors.records[0].error_message == "payment gateway down");
  CHECK(errors.records[0].status == 502);
  CHECK(errors.records[1].error_message == "unhandled exception");
  CHECK(errors.records[1].endpoint == "/users");
  const auto requests = segment->ReadRing(0, reader::RingKind::kRequests, 0);
  CHECK(requests.records.size() == 8);
  CHECK(requests.records[3].response_bytes == 99);
}

TEST_CASE("kit: a custom LLM prefix names the families") {
  TempDir dir;
  WriterOptions writer_options = testing::WriterIn(dir, "shop");
  auto writer = Writer::Create(writer_options).value();
  ServiceKitOptions options;
  options.llm_prefix = "openai";
  auto kit = ServiceKit::Create(*writer, options).value();
  kit->record_llm_usage("/chat", "gpt", 10, 0.01, "success");
  testing::Totals totals;
  testing::AddSegment(*reader::Segment::Open(writer->path()).value(), totals);
  CHECK(totals.scalars.at("openai_tokens_total{/chat,gpt}") == 10);
  CHECK(totals.scalars.at("openai_api_cost_dollars_total{/chat,gpt}") == 0.01);
}

}  // namespace
}  // namespace shmetrics
