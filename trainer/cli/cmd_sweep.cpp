// kvmtrain sweep: a base config and a grid or list of overrides, trained one run after another.
#include <cstdio>

#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/sweep.h"

int cmd_sweep(int argc, char** argv) {
  cli::Args args("sweep",
                 "Train every run of a sweep file (a base config plus a grid: or runs: of overrides), one after "
                 "another, each as `kvmtrain train` in <out>/<run name>. Finished runs are skipped and interrupted "
                 "ones resume (--resume auto), so rerunning continues the sweep. Writes <out>/summary.{md,csv,json} "
                 "and <out>/loss_curves.png.");
  args.positional("SWEEP", "the sweep YAML file (base:, out:, set:, grid: or runs:, mpirun_np:)");
  args.option("out", "DIR", "the sweep directory (replaces the file's out:)");
  args.flag("dry-run", "list the runs and their commands, train nothing");
  args.flag("summary", "only rewrite the summary and the plot from the runs as they stand");
  args.parse(argc, argv, 2);
  const sweep::Sweep s = sweep::load(args.str("SWEEP"), args.has("out") ? args.str("out") : "");
  if (args.has("summary")) {
    sweep::write_summary(s, {});
    std::printf("sweep: summary %s/summary.md\n", s.out.c_str());
    return 0;
  }
  return sweep::run(s, args.has("dry-run"));
}
