#pragma once
// Ends a function after a switch that returns from every enumerator of an enum class, where the
// compiler cannot know that the value is one of them (-Wreturn-type). The build already fails on
// a switch that misses an enumerator (-Werror=switch), so only a value outside the enum gets here.
// C++23's std::unreachable, but loud: it aborts.
#include <cstdlib>

[[noreturn]] inline void unreachable() { std::abort(); }
