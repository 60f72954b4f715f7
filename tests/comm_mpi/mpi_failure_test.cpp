// Failures of the MPI backend: a message of the wrong size, a silent peer, a rank that does not
// join a collective. Each raises CommError naming the peer or the group, within the group's
// timeout, and leaves the group unusable rather than out of step.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "mpi_test_world.h"

namespace shardlm::test {
namespace {

using namespace std::chrono_literals;

// Runs `receive` on rank 0 while rank 1 sends `sent` bytes; returns rank 0's error text.
std::string receive_wrong_size(comm::Group& group, size_t sent, size_t expected) {
  std::vector<uint8_t> out(sent, 5), in(expected);
  std::string error;
  if (group.rank() == 1) group.send(0, out.data(), sent);
  if (group.rank() == 0) {
    try {
      group.recv(1, in.data(), expected);
      error = "no error";
    } catch (const comm::CommError& e) {
      error = e.what();
    }
  }
  return error;
}

TEST(MpiFailure, LargerMessageThanExpectedIsAnError) {
  auto group = fresh_world();
  std::string error = receive_wrong_size(*group, 8, 4);
  if (group->rank() == 0) {
    EXPECT_NE(error.find("receiving 4 bytes from rank 1"), std::string::npos) << error;
    EXPECT_NE(error.find("the message has 8 bytes"), std::string::npos) << error;
    // The group is out of step now: it refuses further calls instead of mismatching them.
    uint8_t byte;
    try {
      group->recv(1, &byte, 1);
      ADD_FAILURE() << "a broken group accepted a call";
    } catch (const comm::CommError& e) {
      EXPECT_NE(std::string(e.what()).find("unusable"), std::string::npos) << e.what();
    }
  }
  test_world().barrier();
}

TEST(MpiFailure, SmallerMessageThanExpectedIsAnError) {
  auto group = fresh_world();
  std::string error = receive_wrong_size(*group, 4, 8);
  if (group->rank() == 0) {
    EXPECT_NE(error.find("receiving 8 bytes from rank 1 (host"), std::string::npos) << error;
    EXPECT_NE(error.find("the message has 4 bytes"), std::string::npos) << error;
  }
  test_world().barrier();
}

TEST(MpiFailure, RendezvousSizedMessagesOfTheWrongSizeNeverOverrunTheBuffer) {
  // Open MPI 4.1 itself writes a truncated rendezvous message (over ~4 KB) past the buffer; the
  // backend must check the size before it receives. A guard after the buffer shows any overrun.
  for (size_t sent : {size_t(300000), size_t(9000)}) {
    auto group = fresh_world();
    std::vector<uint8_t> out(sent, 7), in(8000 + 4096, 0);
    std::string error;
    if (group->rank() == 1) group->send(0, out.data(), sent);
    if (group->rank() == 0) {
      try {
        group->recv(1, in.data(), 8000);
      } catch (const comm::CommError& e) {
        error = e.what();
      }
      EXPECT_NE(error.find(fmt::format("the message has {} bytes", sent)), std::string::npos) << error;
      EXPECT_EQ(std::count(in.begin() + 8000, in.end(), 0), 4096) << "bytes after the buffer were written";
    }
    test_world().barrier();
  }
}

TEST(MpiFailure, WrongSizesAreCaughtOnTheLargeMessagePathToo) {
  for (auto [sent, expected] : {std::pair<size_t, size_t>{4500, 3500}, {3500, 4500}, {999, 4500}}) {
    auto group = fresh_world();
    as_mpi(*group).set_large_message_bytes(1000);
    std::string error = receive_wrong_size(*group, sent, expected);
    if (group->rank() == 0) {
      EXPECT_NE(error.find(fmt::format("receiving {} bytes from rank 1", expected)), std::string::npos) << error;
      EXPECT_NE(error.find(fmt::format("the message has {} bytes", sent)), std::string::npos) << error;
    }
    test_world().barrier();
  }
}

TEST(MpiFailure, SilentPeerTimesOutNamingIt) {
  auto group = fresh_world(300ms);
  if (group->rank() == 0) {
    int32_t value = 0;
    const auto start = std::chrono::steady_clock::now();
    try {
      group->recv(1, &value, sizeof value);
      ADD_FAILURE() << "a recv from a silent peer returned";
    } catch (const comm::CommError& e) {
      std::string error = e.what();
      EXPECT_NE(error.find("receiving 4 bytes from rank 1 (host"), std::string::npos) << error;
      EXPECT_NE(error.find("no answer within 300 ms"), std::string::npos) << error;
    }
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_GE(waited, 0.29);
    EXPECT_LT(waited, 3.0);
  }
  test_world().barrier();
}

TEST(MpiFailure, CollectiveWithAMissingRankTimesOutNamingTheGroup) {
  auto group = fresh_world(300ms);
  const bool late = group->rank() == group->size() - 1;
  if (late) {
    // Joins only after the others gave up; their abandoned barrier still completes it.
    std::this_thread::sleep_for(700ms);
    EXPECT_NO_THROW(group->barrier());
  } else {
    const auto start = std::chrono::steady_clock::now();
    try {
      group->barrier();
      ADD_FAILURE() << "a barrier without the last rank returned";
    } catch (const comm::CommError& e) {
      std::string error = e.what();
      EXPECT_NE(error.find(fmt::format("barrier over the world of {} ranks", group->size())), std::string::npos)
          << error;
      EXPECT_NE(error.find("no answer within 300 ms"), std::string::npos) << error;
    }
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(waited, 3.0);
  }
  group.reset();
  test_world().barrier();
}

}  // namespace
}  // namespace shardlm::test
