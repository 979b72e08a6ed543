#include "trainer/cli/model_device.h"

#include <optional>
#include <string>

#include "trainer/train/backend_choice.h"

void add_device_option(cli::Args& args) {
  args.option("device", "cpu|cuda", "where the model runs (default: the run's train.device)", "");
}

const Backend& device_backend(const cli::Args& args, const config::Config& cfg) {
  if (!args.has("device")) return backend_of(cfg.train.device);
  const std::string name = args.str("device");
  const std::optional<config::Device> device = config::parse<config::Device>(name);
  if (!device) throw UsageError("--device " + name + ": expected cpu or cuda");
  return backend_of(*device);
}
