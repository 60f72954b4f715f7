// SharedLibrary: how shardlm finds cuBLAS and NCCL at run time, tested on libraries every Linux
// machine has (the C math library) and on ones that do not exist.
#include "core/shared_library.h"

#include <gtest/gtest.h>
#include <stdlib.h>

using namespace shardlm;

TEST(SharedLibrary, TakesTheFirstNameTheLoaderFindsAndItsFunctions) {
  ::unsetenv("SHARDLM_TEST_LIBRARY");
  const SharedLibrary lib = SharedLibrary::open("SHARDLM_TEST_LIBRARY", {"libshardlm-absent.so.9", "libm.so.6"});
  ASSERT_TRUE(lib) << lib.why();
  EXPECT_EQ(lib.path(), "libm.so.6");
  auto* cosine = lib.function<double(double)>("cos");
  EXPECT_DOUBLE_EQ(cosine(0.0), 1.0);
  try {
    lib.function<void()>("shardlm_no_such_function");
    ADD_FAILURE() << "a missing function was found";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("libm.so.6 has no function shardlm_no_such_function"), std::string::npos)
        << e.what();
  }
}

TEST(SharedLibrary, SaysWhyWhenNoneLoads) {
  ::unsetenv("SHARDLM_TEST_LIBRARY");
  const SharedLibrary lib = SharedLibrary::open("SHARDLM_TEST_LIBRARY", {"libshardlm-absent.so.9", "/nonexistent/libx.so"});
  EXPECT_FALSE(lib);
  EXPECT_NE(lib.why().find("libshardlm-absent.so.9"), std::string::npos) << lib.why();
  EXPECT_NE(lib.why().find("/nonexistent/libx.so"), std::string::npos) << lib.why();
  EXPECT_NE(lib.why().find("set SHARDLM_TEST_LIBRARY to its path"), std::string::npos) << lib.why();
}

TEST(SharedLibrary, TheEnvironmentNamesTheOnlyFileTried) {
  ::setenv("SHARDLM_TEST_LIBRARY", "/nonexistent/libm.so.6", 1);
  const SharedLibrary lib = SharedLibrary::open("SHARDLM_TEST_LIBRARY", {"libm.so.6"});
  EXPECT_FALSE(lib);  // libm.so.6 itself would load: the variable overrides the list
  EXPECT_NE(lib.why().find("/nonexistent/libm.so.6"), std::string::npos) << lib.why();
  ::setenv("SHARDLM_TEST_LIBRARY", "libm.so.6", 1);
  EXPECT_TRUE(SharedLibrary::open("SHARDLM_TEST_LIBRARY", {"libshardlm-absent.so.9"}));
  ::unsetenv("SHARDLM_TEST_LIBRARY");
}
