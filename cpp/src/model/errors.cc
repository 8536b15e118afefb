// Out-of-line members of the exception classes: their type information and vtables live in the
// library, so a program catches the same types that the library throws (shared builds too).
#include "fusedrnn/errors.h"

namespace fusedrnn {

CheckpointError::CheckpointError(const std::string& what) : std::runtime_error(what) {}
CheckpointError::~CheckpointError() = default;
ConfigError::ConfigError(const std::string& what) : std::runtime_error(what) {}
ConfigError::~ConfigError() = default;
JsonError::JsonError(const std::string& what) : std::runtime_error(what) {}
JsonError::~JsonError() = default;

}  // namespace fusedrnn
