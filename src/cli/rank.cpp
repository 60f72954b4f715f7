// `shardlm rank`: one local rank of a GPU run, started by the run's own process (generate, bench)
// through exec; not for people to type, so it is left out of the help's list.
#include "cli/commands.h"
#include "runtime/local_rank.h"

namespace shardlm::cli {

void add_rank(CLI::App& app) {
  auto* cmd = app.add_subcommand("rank", "Serve one local rank of a GPU run (started by shardlm itself)");
  cmd->group("");  // hidden
  auto fd = std::make_shared<int>(-1);
  cmd->add_option("--job-fd", *fd, "Descriptor the rank's job is read from")->required();
  cmd->callback([fd] { serve_rank_job(*fd); });
}

}  // namespace shardlm::cli
