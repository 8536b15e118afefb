// FUSEDRNN_API marks what libfusedrnn exports. The library is compiled with hidden visibility,
// so in a shared build only these declarations are visible to programs that link it.
#pragma once

#include "fusedrnn/config.h"

#if FUSEDRNN_SHARED_LIBRARY
#if defined(_WIN32)
#ifdef FUSEDRNN_BUILDING_LIBRARY
#define FUSEDRNN_API __declspec(dllexport)
#else
#define FUSEDRNN_API __declspec(dllimport)
#endif
#else
#define FUSEDRNN_API __attribute__((visibility("default")))
#endif
#else
#define FUSEDRNN_API
#endif
