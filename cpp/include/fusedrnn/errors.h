// Exceptions of the model layer (checkpoints, configs, JSON). The kernels throw
// std::invalid_argument for bad arguments; so do Model::forward and Stream for theirs.
#pragma once

#include <stdexcept>
#include <string>

#include "fusedrnn/export.h"

namespace fusedrnn {

// A file or buffer that is not a valid safetensors file or fusedrnn checkpoint: missing,
// unreadable, truncated, malformed header, bad offsets, wrong or missing tensors, tensor shapes or
// dtypes that do not match the model config.
class FUSEDRNN_API CheckpointError : public std::runtime_error {
 public:
  explicit CheckpointError(const std::string& what);
  ~CheckpointError() override;
};

// A well-formed checkpoint whose model config this library cannot run: an unknown module type,
// cell or option, a missing or invalid config value; also a Stream asked of a bidirectional model.
class FUSEDRNN_API ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(const std::string& what);
  ~ConfigError() override;
};

// Text that is not valid JSON (parse_json), or a JsonValue read as the wrong kind.
class FUSEDRNN_API JsonError : public std::runtime_error {
 public:
  explicit JsonError(const std::string& what);
  ~JsonError() override;
};

}  // namespace fusedrnn
