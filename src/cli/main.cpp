// shardlm: run one language model across machines. Every user error ends here as one line.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "runtime/local_rank.h"

int main(int argc, char** argv) {
  CLI::App app{"shardlm: run one large language model on one machine or split over several"};
  app.set_version_flag("--version", SHARDLM_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // -q / -v work before or after the subcommand
  bool quiet = false, verbose = false;
  app.add_flag("-q,--quiet", quiet, "Print no progress on stderr");
  app.add_flag("-v,--verbose", verbose, "Print debugging detail on stderr");
  app.parse_complete_callback([&] {
    if (quiet) shardlm::set_log_level(shardlm::LogLevel::Quiet);
    if (verbose) shardlm::set_log_level(shardlm::LogLevel::Debug);
  });
  shardlm::cli::add_make_model(app);
  shardlm::cli::add_tokenize(app);
  shardlm::cli::add_generate(app);
  shardlm::cli::add_bench(app);
  shardlm::cli::add_inspect(app);
  shardlm::cli::add_convert(app);
  shardlm::cli::add_plan(app);
  shardlm::cli::add_worker(app);
  shardlm::cli::add_rank(app);
  shardlm::set_rank_executable("/proc/self/exe");  // GPU runs start their local ranks from this program
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const shardlm::Error& e) {
    fmt::print(stderr, "shardlm: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "shardlm: internal error: {}\n", e.what());
    return 2;
  }
  return 0;
}
