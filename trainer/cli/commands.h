#pragma once
// One function per kvmtrain subcommand; each parses its own flags (argv[2..]) and returns the
// exit status. main.cpp only dispatches. Errors are thrown (UsageError or std::exception)
// and become one line on stderr with exit status 2.

int cmd_prepare(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_forward(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_sweep(int argc, char** argv);
