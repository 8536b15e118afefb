// Which instruction-set copies of the kernels were compiled in, and which one runs here.
#pragma once

#include <string>

namespace fusedrnn {

const char* active_isa();     // e.g. "avx512"; FUSEDRNN_ISA may ask for a narrower one
std::string compiled_isas();  // e.g. "sse2, avx2, avx512"

}  // namespace fusedrnn
