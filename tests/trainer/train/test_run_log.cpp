// log.jsonl under a full disk: RunLog::write must throw, naming the file, and leave no cut row.
// /dev/full stands in for the disk: every write to it fails with ENOSPC.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>
#include <string>

#include "common/json.h"
#include "tests/test_util.h"
#include "trainer/train/run_log.h"

namespace fs = std::filesystem;

TEST(RunLog, AFullDiskIsAnErrorNotASilentLoss) {
  const fs::path dir = fs::temp_directory_path() / ("kvm_run_log_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  {  // a healthy log: rows whole, one per line
    RunLog log(dir.string());
    log.write(json::Object{{"step", 1}, {"loss", 2.5}});
    log.write(json::Object{{"step", 2}, {"loss", 2.25}});
  }
  EXPECT_EQ(test_util::slurp(dir / "log.jsonl"), "{\"loss\":2.5,\"step\":1}\n{\"loss\":2.25,\"step\":2}\n");

  const fs::path full = dir / "full";
  fs::create_directories(full);
  fs::create_symlink("/dev/full", full / "log.jsonl");
  RunLog log(full.string());
  try {
    log.write(json::Object{{"step", 3}});
    FAIL() << "a write to a full disk returned";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find((full / "log.jsonl").string()), std::string::npos) << what;
    EXPECT_NE(what.find("No space left on device"), std::string::npos) << what;
  }
  fs::remove_all(dir);
}
