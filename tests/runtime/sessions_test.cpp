// 200 distributed sessions in a row in one process leave nothing behind: no file descriptor,
// socket, thread, child process or shared-memory segment. (The report behind shardlm saw RDMA
// resources leak between runs until machines crashed.)
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "runtime/cluster.h"
#include "test_models.h"

using namespace shardlm;
namespace fs = std::filesystem;

namespace {
int count_entries(const std::string& dir, const std::string& prefix = "") {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(prefix, 0) == 0) ++n;
  return n;
}
struct Resources {
  int fds, threads, shm;
  bool children;
};
Resources resources() {
  int status;
  bool children = !(::waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD);
  return {count_entries("/proc/self/fd"), count_entries("/proc/self/task"),
          count_entries("/dev/shm", "shardlm-" + std::to_string(::getpid()) + "-"), children};
}
}  // namespace

TEST(Sessions, TwoHundredSessionsLeakNothing) {
  std::string model = test::test_model({});
  const int kSessions = 200;
  Resources before = resources();
  ASSERT_FALSE(before.children);
  std::vector<int32_t> first;
  // Parsed once, as a server would; each session still starts and stops every rank.
  auto tokenizer = std::make_shared<const Tokenizer>(Tokenizer::from_dir(model));
  for (int i = 0; i < kSessions; ++i) {
    ClusterOptions o;
    o.model_path = model;
    o.tokenizer = tokenizer;
    o.context = 64;
    o.threads_per_rank = 1;
    // Cycle through the backends and splits so each one's teardown is exercised many times.
    const char* backends[] = {"shm", "tcp", "tcp"};
    o.backend = backends[i % 3];
    o.topology = i % 3 == 2 ? "mesh" : "ring";
    if (i % 2) o.tp = 2;
    else o.pp = 2;
    Cluster c(o);
    GenerateRequest r;
    r.prompt = "Hello";
    r.max_new_tokens = 2;
    r.stop_at_eos = false;
    auto g = c.generate(r);
    if (i == 0) first = g.output_ids;
    ASSERT_EQ(g.output_ids, first) << "session " << i;
  }
  Resources after = resources();
  EXPECT_EQ(after.fds, before.fds);
  EXPECT_EQ(after.threads, before.threads);
  EXPECT_EQ(after.shm, before.shm);
  EXPECT_FALSE(after.children);
}
