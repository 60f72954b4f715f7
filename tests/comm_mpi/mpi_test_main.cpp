// gtest main for MPI jobs: rank 0 prints the usual report; other ranks print only their
// failures, prefixed with their rank, so the interleaved output stays readable. Every rank
// exits non-zero when any rank failed, and rank 0 says which ranks did. Run without mpirun, it
// runs only the MpiSingleton tests.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "comm/mpi/mpi_group.h"
#include "mpi_test_world.h"

namespace shardlm::test {

namespace {

std::unique_ptr<comm::Group> world;

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

}  // namespace

comm::Group& test_world() { return *world; }

std::unique_ptr<comm::Group> fresh_world(std::chrono::milliseconds timeout) {
  return comm::make_mpi_world_group(timeout);
}

comm::mpi::MpiGroup& as_mpi(comm::Group& group) { return dynamic_cast<comm::mpi::MpiGroup&>(group); }

}  // namespace shardlm::test

int main(int argc, char** argv) {
  using namespace shardlm;
  ::testing::InitGoogleTest(&argc, argv);
  // Started directly, the process is a world of one: only the tests meant for that apply.
  if (!comm::launched_by_mpirun()) ::testing::GTEST_FLAG(filter) = "MpiSingleton.*";
  // Linking the backend must not start MPI; only making a group does.
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    std::fprintf(stderr, "test_comm_mpi: MPI was initialized before any group was made\n");
    return 1;
  }
  test::world = comm::make_mpi_world_group(std::chrono::seconds(20));
  const int rank = test::world->rank();
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new test::RankFailurePrinter(rank));
  }
  int result = RUN_ALL_TESTS();
  std::vector<int32_t> results(size_t(test::world->size()));
  int32_t mine = result;
  try {
    test::world->all_gather(&mine, sizeof mine, results.data());
  } catch (const comm::CommError& e) {
    std::fprintf(stderr, "[rank %d] collecting results: %s\n", rank, e.what());
    return 1;
  }
  if (rank == 0) {
    std::string failed;
    for (size_t r = 0; r < results.size(); ++r)
      if (results[r] != 0) failed += " " + std::to_string(r);
    if (!failed.empty()) std::fprintf(stderr, "test_comm_mpi: tests failed on rank(s)%s\n", failed.c_str());
    std::fflush(stderr);
  }
  for (int32_t r : results)
    if (r != 0) result = 1;
  test::world.reset();
  return result;
}
