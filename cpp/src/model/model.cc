// fusedrnn::Model: checkpoint -> validated config and parameters -> batch forward over the
// kernels of fusedrnn.h, layer by layer and direction by direction as fusedrnn.layers does.
#include "fusedrnn/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "kernels/fpenv.h"
#include "lowp/lowp.h"
#include "fusedrnn/fusedrnn.h"
#include "fusedrnn/ctc.h"
#include "model_impl.h"

namespace fusedrnn {

using detail::ModelImpl;

namespace detail {
struct ContextAccess {
  static void* reserve(Context& c, std::size_t bytes) { return c.reserve(bytes); }
  static void set_output(Context& c, const void* p) { c.rnn_output_ = p; }
};
}  // namespace detail

namespace {

// Sizes in a config are at most 2^30: every product of three of them fits in int64.
constexpr std::int64_t kMaxDim = std::int64_t(1) << 30;

std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------------------------
// Config

class ConfigReader {
 public:
  ConfigReader(const JsonValue& cfg, std::string where) : cfg_(cfg), where_(std::move(where)) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw ConfigError(where_ + ": model config: " + what);
  }
  const JsonValue* get(const char* key) {
    used_.insert(key);
    const JsonValue* v = cfg_.find(key);
    return v;
  }
  // An integer >= minimum; `def` when absent. null is not accepted unless `nullable`.
  std::int64_t integer(const char* key, std::int64_t def, std::int64_t minimum,
                       bool nullable = false, bool* is_null = nullptr) {
    const JsonValue* v = get(key);
    if (is_null) *is_null = !v || v->is_null();
    if (!v || (nullable && v->is_null())) return def;
    if (!v->is_integer() || v->as_int() < minimum || v->as_int() > kMaxDim)
      fail(std::string(key) + " must be an integer in [" + std::to_string(minimum) + ", 2^30], got " +
           v->dump().substr(0, 60));
    return v->as_int();
  }
  bool boolean(const char* key, bool def) {
    const JsonValue* v = get(key);
    if (!v) return def;
    if (!v->is_bool()) fail(std::string(key) + " must be true or false, got " + v->dump().substr(0, 60));
    return v->as_bool();
  }
  double number(const char* key, double def) {
    const JsonValue* v = get(key);
    if (!v) return def;
    if (!v->is_number()) fail(std::string(key) + " must be a number, got " + v->dump().substr(0, 60));
    return v->as_double();
  }
  std::string string(const char* key, const std::string& def) {
    const JsonValue* v = get(key);
    if (!v) return def;
    if (!v->is_string()) fail(std::string(key) + " must be a string, got " + v->dump().substr(0, 60));
    return v->as_string();
  }
  void ignore(const char* key) { get(key); }
  // Keys this library does not know would be silently ignored options: refuse them.
  void check_unknown() const {
    for (std::size_t i = 0; i < cfg_.size(); ++i)
      if (!used_.count(cfg_.key(i)))
        fail("unknown key " + quoted(cfg_.key(i)) + " (written by a newer fusedrnn?)");
  }

 private:
  const JsonValue& cfg_;
  std::string where_;
  std::set<std::string, std::less<>> used_;
};

ModelConfig parse_config(const JsonValue& cfg, const std::string& where) {
  ConfigReader r(cfg, where);
  ModelConfig c;
  c.type = r.string("type", "");
  // CtcRecognizer (fusedrnn.tasks.recognise, `fusedrnn train --task recognise`): frames ->
  // (bidirectional) LSTM / GRU / RNN -> Linear to `classes` CTC scores; its parameters are a
  // RecurrentModel's ("rnn.*", "head.*") under other config names (features, classes, hidden,
  // layers).
  const bool ctc_rec = c.type == "CtcRecognizer";
  const bool model = c.type == "RecurrentModel" || ctc_rec;
  if (!model && c.type != "LSTM" && c.type != "GRU" && c.type != "RNN")
    r.fail("type " + quoted(c.type) +
           " is not supported (RecurrentModel, CtcRecognizer, or a bare LSTM, GRU or RNN "
           "layer)");
  if (ctc_rec) {
    const std::string cell = r.string("cell", "lstm");
    if (cell == "lstm")
      c.cell = CellType::lstm;
    else if (cell == "gru")
      c.cell = CellType::gru;
    else if (cell == "rnn")
      c.cell = CellType::rnn;
    else
      r.fail("cell must be 'lstm', 'gru' or 'rnn', got " + quoted(cell));
    if (!cfg.find("features")) r.fail("features is missing");
    if (!cfg.find("classes")) r.fail("classes is missing");
    c.input_size = r.integer("features", 0, 1);
    c.has_head = true;
    c.output_size = r.integer("classes", 0, 1);
    c.bias = true;
  } else if (model) {
    const std::string cell = r.string("cell", "lstm");
    if (cell == "lstm")
      c.cell = CellType::lstm;
    else if (cell == "gru")
      c.cell = CellType::gru;
    else if (cell == "rnn")
      c.cell = CellType::rnn;
    else
      r.fail("cell must be 'lstm', 'gru' or 'rnn', got " + quoted(cell));
    bool no_vocab = true, no_input = true, no_embed = true;
    c.vocab_size = r.integer("vocab_size", 0, 1, true, &no_vocab);
    c.input_size = r.integer("input_size", 0, 1, true, &no_input);
    c.embed_dim = r.integer("embed_dim", 0, 1, true, &no_embed);
    if (no_vocab == no_input) r.fail("give exactly one of vocab_size and input_size");
    if (no_vocab && !no_embed) r.fail("embed_dim needs vocab_size");
    if (!no_vocab && no_embed) c.embed_dim = 64;  // RecurrentModel's default
    c.has_head = true;
    c.output_size = r.integer("output_size", 1, 1);
    c.bias = true;
  } else {
    c.cell = c.type == "LSTM" ? CellType::lstm : c.type == "GRU" ? CellType::gru : CellType::rnn;
    c.input_size = r.integer("input_size", 0, 1);
    if (!cfg.find("input_size")) r.fail("input_size is missing");
    c.bias = r.boolean("bias", true);
    r.boolean("batch_first", false);  // Python's calling convention; C++ is time-major
  }
  if (!cfg.find("hidden_size") && !model) r.fail("hidden_size is missing");
  c.hidden_size = r.integer(ctc_rec ? "hidden" : "hidden_size", 128, 1);
  c.num_layers = r.integer(ctc_rec ? "layers" : "num_layers", 1, 1);
  if (c.num_layers > 4096) r.fail("num_layers " + std::to_string(c.num_layers) + " is too large");
  c.bidirectional = r.boolean("bidirectional", ctc_rec);
  c.dropout = r.number("dropout", 0.0);  // (training only: recorded, checked, not used)
  if (!(c.dropout >= 0 && c.dropout <= 1)) r.fail("dropout must be in [0, 1]");  // torch's range
  const bool lstm_keys = (model && !ctc_rec) || (!model && c.cell == CellType::lstm);
  if (lstm_keys) {
    c.proj_size = r.integer("proj_size", 0, 0);
    c.peepholes = r.boolean("peepholes", false);
    c.forget_bias = r.number("forget_bias", 0.0);
    if (c.cell != CellType::lstm && (c.proj_size || c.peepholes || c.forget_bias != 0))
      r.fail("proj_size, peepholes and forget_bias need cell 'lstm'");
    if (c.proj_size) {
      try {  // the kernel is the one authority on projection sizes
        lstm_cache_size(Dims{1, 1, 1, c.hidden_size, c.proj_size});
      } catch (const std::invalid_argument& e) {
        r.fail(e.what());
      }
    }
  }
  if ((model && !ctc_rec) || c.cell == CellType::gru) {
    // checked whatever the cell (Python refuses any other value), used by the GRU
    const std::string v = r.string("variant", "reset_after");
    if (v != "reset_after" && v != "reset_before")
      r.fail("variant must be 'reset_after' or 'reset_before', got " + quoted(v));
    if (c.cell == CellType::gru)
      c.variant = v == "reset_after" ? GruVariant::reset_after : GruVariant::reset_before;
  }
  if ((model && !ctc_rec) || c.cell == CellType::rnn) {
    const std::string v = r.string("nonlinearity", "tanh");  // (likewise, for the RNN)
    if (v != "tanh" && v != "relu")
      r.fail("nonlinearity must be 'tanh' or 'relu', got " + quoted(v));
    if (c.cell == CellType::rnn)
      c.nonlinearity = v == "tanh" ? Nonlinearity::tanh : Nonlinearity::relu;
  }
  // issue 19's options: in the config itself (RecurrentModel, the layers), or in the
  // CtcRecognizer's "options" object (`fusedrnn train --task recognise --layer-norm ...`)
  auto regularisers = [&c](ConfigReader& o) {
    const char* set = nullptr;  // the first option that is set, for the errors below
    const JsonValue* ln = o.get("layer_norm");
    if (ln && !ln->is_null()) {
      const std::string v = ln->is_string() ? ln->as_string() : ln->dump().substr(0, 60);
      if (v == "haste")
        c.layer_norm = LayerNorm::haste;
      else if (v == "tfa")
        c.layer_norm = LayerNorm::tfa;
      else
        o.fail("layer_norm must be null, 'haste' or 'tfa', got " + quoted(v));
      set = "layer_norm";
    }
    c.ln_eps = o.number("ln_eps", 1e-5);
    if (!(c.ln_eps > 0 && c.ln_eps < HUGE_VAL)) o.fail("ln_eps must be a finite number > 0");
    if (c.ln_eps != 1e-5 && c.layer_norm == LayerNorm::none) o.fail("ln_eps needs layer_norm");
    for (auto [key, slot] : {std::pair<const char*, double*>{"zoneout_h", &c.zoneout_h},
                             {"zoneout_c", &c.zoneout_c},
                             {"recurrent_dropout", &c.recurrent_dropout},
                             {"input_dropout", &c.input_dropout},
                             {"weight_drop", &c.weight_drop}}) {
      *slot = o.number(key, 0.0);
      if (!(*slot >= 0 && *slot < 1)) o.fail(std::string(key) + " must be in [0, 1)");
      if (*slot > 0 && !set) set = key;
    }
    // dropout_masks (training only: how the dropout masks are drawn), checked and not used
    const std::string dm = o.string("dropout_masks", "shared");
    if (dm != "shared" && dm != "per_gate")
      o.fail("dropout_masks must be 'shared' or 'per_gate', got " + quoted(dm));
    if (set && c.cell == CellType::rnn)
      o.fail(std::string(set) + " needs cell 'lstm' or 'gru' (the regularised kernels)");
    // layer norm and zoneout change the inference (the regularised kernel, which projects but
    // has no peepholes or reset-before GRU); the dropouts alone are the plain model here
    const char* kset = c.layer_norm != LayerNorm::none ? "layer_norm"
                       : c.zoneout_h > 0              ? "zoneout_h"
                       : c.zoneout_c > 0              ? "zoneout_c"
                                                      : nullptr;
    if (kset && c.cell == CellType::lstm && c.peepholes)
      o.fail(std::string(kset) + " cannot be combined with peepholes");
    if (c.cell == CellType::gru && c.layer_norm == LayerNorm::tfa)
      o.fail("layer_norm 'tfa' needs cell 'lstm' (the GRU has haste's placement only)");
    if (c.cell == CellType::gru && c.zoneout_c > 0)
      o.fail("zoneout_c needs cell 'lstm' (the GRU has no cell state)");
    if (kset && c.cell == CellType::gru && c.variant != GruVariant::reset_after)
      o.fail(std::string(kset) + " needs variant 'reset_after'");
  };
  if (!ctc_rec) {
    regularisers(r);
  } else if (const JsonValue* opts = r.get("options"); opts && !opts->is_null()) {
    if (!opts->is_object()) r.fail("options must be an object, got " + opts->dump().substr(0, 60));
    ConfigReader o(*opts, where);  // (its keys as the flat config's, in "options")
    regularisers(o);
    o.check_unknown();
  }
  if (!ctc_rec) r.string("init", "pytorch");  // initialisation only
  {
    const JsonValue* seed = r.get("seed");  // initialisation only: an integer or null
    if (seed && !seed->is_null() && !(seed->is_number() && std::floor(seed->as_double()) == seed->as_double()))
      r.fail("seed must be an integer or null");
  }
  const std::string dt = r.string("dtype", "float32");
  if (dt == "float32")
    c.dtype = DType::f32;
  else if (dt == "float64")
    c.dtype = DType::f64;
  else
    r.fail("dtype must be 'float32' or 'float64', got " + quoted(dt));
  if (c.dtype == DType::f32) {
    // The regularised kernel takes these as float: 0.99999999 rounds to 1 and 1e-50 to 0 there,
    // which it refuses at every forward (and Stream::step, noexcept, would terminate on).
    if (!(float(c.zoneout_h) < 1.0f)) r.fail("zoneout_h rounds to 1 in float32: it must be < 1");
    if (!(float(c.zoneout_c) < 1.0f)) r.fail("zoneout_c rounds to 1 in float32: it must be < 1");
    const float eps = float(c.ln_eps);
    if (!(eps >= std::numeric_limits<float>::min() && eps <= std::numeric_limits<float>::max()))
      r.fail("ln_eps must be a normal float32 number (> 0 and finite after rounding), got " +
             std::to_string(c.ln_eps));
  }
  if (r.get("cell_clip"))  // (written only when set)
    r.fail("cell_clip is not supported by the C++ Model (an option of the Python LSTM; its "
           "step kernels do not clip)");
  r.check_unknown();
  if (!c.has_head) c.output_size = c.num_directions() * c.state_size();
  return c;
}

// ---------------------------------------------------------------------------------------------
// Parameters

struct Expected {
  std::string name;
  std::vector<std::int64_t> shape;
  const void** slot;  // where the loaded pointer goes
};

int gates(CellType c) { return c == CellType::lstm ? 4 : c == CellType::gru ? 3 : 1; }

template <typename Scalar>
void pack_head(ModelImpl& m) {
  const ModelConfig& c = m.config;
  const std::int64_t K = c.num_directions() * c.state_size();
  const isa::Kernels<Scalar>& ops = isa::kernels<Scalar>();
  m.head_packed.resize(ops.packed_size(K, c.output_size) * sizeof(Scalar));
  ops.pack(static_cast<const Scalar*>(m.head_w), K, c.output_size, K, true,
           reinterpret_cast<Scalar*>(m.head_packed.data()));
}

std::shared_ptr<ModelImpl> build(const TensorFile& file) {
  const std::string& where = file.where();
  auto impl = std::make_shared<ModelImpl>();
  ModelImpl& m = *impl;
  auto fail = [&](const std::string& what) -> CheckpointError {
    return CheckpointError(where + ": " + what);
  };
  const std::string* format = file.metadata_value("format");
  if (!format || *format != "fusedrnn")
    throw fail("not a fusedrnn checkpoint (__metadata__['format'] is " +
               (format ? quoted(*format) : std::string("missing")) + ")");
  const std::string* version = file.metadata_value("format_version");
  if (!version || *version != "1")
    throw fail("unsupported checkpoint format_version " +
               (version ? quoted(*version) : std::string("(missing)")) + " (this fusedrnn reads '1')");
  if (const std::string* v = file.metadata_value("fusedrnn_version")) m.fusedrnn_version = *v;
  const std::string* model_json = file.metadata_value("model");
  if (!model_json)
    throw ConfigError(where + ": the checkpoint stores no model config (saved from a module "
                              "without one?); fusedrnn::Model needs RecurrentModel or a layer");
  JsonValue cfg;
  try {
    cfg = parse_json(*model_json);
  } catch (const JsonError& e) {
    throw fail(std::string("__metadata__['model'] is not valid JSON (") + e.what() + ")");
  }
  if (!cfg.is_object()) throw fail("__metadata__['model'] must hold a JSON object");
  m.config_json = *model_json;
  if (const std::string* meta = file.metadata_value("metadata")) {
    try {
      // The user's metadata (a vocabulary, say) may be far larger than a config: up to 2^23
      // values (~800 MB parsed) and 512 levels deep, which fusedrnn.save refuses beyond.
      JsonLimits limits;
      limits.max_depth = kMaxMetadataDepth;
      limits.max_values = kMaxMetadataValues;
      m.metadata = parse_json(*meta, limits);
    } catch (const JsonError& e) {
      throw fail(std::string("__metadata__['metadata'] is not valid JSON (") + e.what() + ")");
    }
    if (!m.metadata.is_object()) throw fail("__metadata__['metadata'] must hold a JSON object");
    m.metadata_json = *meta;
  } else {
    m.metadata = parse_json("{}");
  }
  m.config = parse_config(cfg, where);
  const ModelConfig& c = m.config;

  // The tensors the config implies, with their shapes.
  const std::int64_t G = gates(c.cell), H = c.hidden_size, R = c.state_size(), P = c.proj_size;
  const int D = c.num_directions();
  const std::string prefix = c.has_head ? "rnn." : "";
  std::vector<Expected> expected;
  m.layers.resize(std::size_t(c.num_layers * D));
  if (c.token_input()) expected.push_back({"embed.weight", {c.vocab_size, c.embed_dim}, &m.embed});
  for (std::int64_t l = 0; l < c.num_layers; ++l)
    for (int d = 0; d < D; ++d) {
      detail::LayerWeights& lw = m.layers[std::size_t(l * D + d)];
      lw.C = l == 0 ? c.rnn_input_size() : D * R;
      const std::string sfx = "_l" + std::to_string(l) + (d ? "_reverse" : "");
      expected.push_back({prefix + "weight_ih" + sfx, {G * H, lw.C}, &lw.w_ih});
      expected.push_back({prefix + "weight_hh" + sfx, {G * H, R}, &lw.w_hh});
      if (c.bias) {
        expected.push_back({prefix + "bias_ih" + sfx, {G * H}, &lw.b_ih});
        expected.push_back({prefix + "bias_hh" + sfx, {G * H}, &lw.b_hh});
      }
      if (P > 0) expected.push_back({prefix + "weight_hr" + sfx, {P, H}, &lw.w_hr});
      if (c.peepholes) expected.push_back({prefix + "weight_peep" + sfx, {3, H}, &lw.w_peep});
      if (c.layer_norm != LayerNorm::none) {
        expected.push_back({prefix + "ln_gamma_ih" + sfx, {G * H}, &lw.ln_gamma_ih});
        if (c.layer_norm == LayerNorm::tfa)
          expected.push_back({prefix + "ln_beta_ih" + sfx, {G * H}, &lw.ln_beta_ih});
        expected.push_back({prefix + "ln_gamma_hh" + sfx, {G * H}, &lw.ln_gamma_hh});
        if (c.layer_norm == LayerNorm::tfa)
          expected.push_back({prefix + "ln_beta_hh" + sfx, {G * H}, &lw.ln_beta_hh});
        if (c.cell == CellType::lstm) {
          expected.push_back({prefix + "ln_gamma_c" + sfx, {H}, &lw.ln_gamma_c});
          expected.push_back({prefix + "ln_beta_c" + sfx, {H}, &lw.ln_beta_c});
        }
      }
    }
  if (c.has_head) {
    expected.push_back({"head.weight", {c.output_size, D * R}, &m.head_w});
    expected.push_back({"head.bias", {c.output_size}, &m.head_b});
  }

  // Every stored tensor must be expected (optimiser state aside), every expected one stored,
  // with the model's dtype and the expected shape.
  std::vector<const TensorInfo*> found(expected.size(), nullptr);
  for (const TensorInfo& t : file.tensors()) {
    if (t.name.rfind("__optimizer__/state/", 0) == 0) continue;
    if (t.name.rfind("__", 0) == 0) throw fail("unknown reserved tensor " + quoted(t.name));
    std::size_t i = 0;
    while (i < expected.size() && expected[i].name != t.name) ++i;
    if (i == expected.size())
      throw fail("unexpected tensor " + quoted(t.name) + " for the model config " +
                 m.config_json.substr(0, 200));
    found[i] = &t;
  }
  std::size_t total = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const Expected& e = expected[i];
    const TensorInfo* t = found[i];
    if (!t) throw fail("missing tensor " + quoted(e.name) + " (shape " + shape_str(e.shape) + ")");
    if (t->dtype != c.dtype)
      throw fail("tensor " + quoted(e.name) + " is " + dtype_name(t->dtype) + " but the model's " +
                 "dtype is " + dtype_name(c.dtype));
    if (t->shape != e.shape)
      throw fail("tensor " + quoted(e.name) + " has shape " + shape_str(t->shape) +
                 " but the model config needs " + shape_str(e.shape));
    total += internal::align_up(t->nbytes);
  }

  // Copy into one aligned block, native byte order, in checkpoint order.
  m.storage.resize(total);
  std::vector<std::size_t> order(expected.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return found[a]->offset < found[b]->offset; });
  std::size_t at = 0;
  for (std::size_t i : order) {
    const TensorInfo& t = *found[i];
    unsigned char* dst = m.storage.data() + at;
    if (c.dtype == DType::f32)
      internal::copy_little_endian(file.bytes(t), std::size_t(t.numel), reinterpret_cast<float*>(dst));
    else
      internal::copy_little_endian(file.bytes(t), std::size_t(t.numel), reinterpret_cast<double*>(dst));
    *expected[i].slot = dst;
    m.params.push_back({t.name, t.dtype, t.shape, dst});
    at += internal::align_up(t.nbytes);
  }
  if (c.has_head) {
    if (c.dtype == DType::f32)
      pack_head<float>(m);
    else
      pack_head<double>(m);
  }
  return impl;
}

// ---------------------------------------------------------------------------------------------
// Forward

[[noreturn]] void invalid(const std::string& what) { throw std::invalid_argument(what); }

// Throws std::invalid_argument(message) unless ok; the message is only built on failure (a
// forward with a Context allocates nothing).
#define FUSEDRNN_REQUIRE(ok, message) \
  do {                                \
    if (!(ok)) invalid(message);      \
  } while (0)

// Scalars -> bytes, refusing sizes that overflow.
std::size_t bytes_of(const char* fn, std::int64_t a, std::int64_t b, std::int64_t c,
                     std::size_t scalar) {
  std::int64_t ab = 0, abc = 0;
  std::uint64_t bytes = 0;
  FUSEDRNN_REQUIRE(internal::checked_mul(a, b, ab) && internal::checked_mul(ab, c, abc) &&
              internal::checked_mul(std::uint64_t(abc), std::uint64_t(scalar), bytes) &&
              bytes < (std::uint64_t(1) << 62),
          std::string(fn) + ": T, N and the model's sizes ask for too much memory");
  return internal::align_up(std::size_t(bytes));
}

template <typename Scalar>
void run(const ModelImpl& m, Precision precision, const char* fn, std::int64_t T, std::int64_t N, const Scalar* x,
         const std::int64_t* tokens, const Scalar* h0, const Scalar* c0,
         const std::int64_t* lengths, Scalar* y, Scalar* h_n, Scalar* c_n, Context& ctx) {
  const ModelConfig& c = m.config;
  FUSEDRNN_REQUIRE(dtype_of<Scalar>() == c.dtype, std::string(fn) + ": the model is " +
                                             dtype_name(c.dtype) + ", called with " +
                                             dtype_name(dtype_of<Scalar>()));
  if (tokens)
    FUSEDRNN_REQUIRE(c.token_input(), std::string(fn) + ": the model takes features "
                                               "(input_size), not token ids: call forward");
  else
    FUSEDRNN_REQUIRE(!c.token_input(), std::string(fn) + ": the model takes token ids (vocab_size): "
                                                "call forward_tokens");
  FUSEDRNN_REQUIRE(T >= 1 && N >= 1, std::string(fn) + ": T and N must be >= 1");
  FUSEDRNN_REQUIRE(tokens || x, std::string(fn) + ": x must not be null");
  FUSEDRNN_REQUIRE(y != nullptr, std::string(fn) + ": y must not be null");
  if (lengths)
    for (std::int64_t n = 0; n < N; ++n)
      FUSEDRNN_REQUIRE(lengths[n] >= 0 && lengths[n] <= T,
              std::string(fn) + ": lengths[" + std::to_string(n) + "] = " +
                  std::to_string(lengths[n]) + " is outside [0, T=" + std::to_string(T) + "]");
  const int D = c.num_directions();
  const std::int64_t L = c.num_layers, H = c.hidden_size, R = c.state_size(), P = c.proj_size;
  const std::int64_t DR = D * R, E = c.rnn_input_size();
  const bool lstm = c.cell == CellType::lstm;

  // Buffers: embedded input, one direction's output (bidirectional), two layer outputs
  // (ping-pong), final-state scratch, kernel workspace.
  const std::size_t S = sizeof(Scalar);
  const std::size_t emb_b = tokens ? bytes_of(fn, T, N, E, S) : 0;
  const std::size_t ydir_b = D == 2 ? bytes_of(fn, T, N, R, S) : 0;
  const std::size_t out_b = bytes_of(fn, T, N, DR, S);
  const std::size_t hs_b = bytes_of(fn, 1, N, R, S), cs_b = bytes_of(fn, 1, N, H, S);
  std::size_t ws_scalars = 0;
  for (std::int64_t l = 0; l < L; ++l) {
    const Dims d{T, N, m.layers[std::size_t(l * D)].C, H, P};
    const std::size_t w = c.regularised_kernel() ? (lstm ? lstm_ln_forward_workspace_size(d)
                                                          : gru_ln_forward_workspace_size(d))
                          : lstm ? lstm_forward_workspace_size(d, precision)
                          : c.cell == CellType::gru ? gru_forward_workspace_size(d, precision)
                                                    : rnn_forward_workspace_size(d, precision);
    ws_scalars = std::max(ws_scalars, w);
  }
  const std::size_t ws_b = bytes_of(fn, 1, 1, std::int64_t(ws_scalars), S);
  unsigned char* base =
      static_cast<unsigned char*>(detail::ContextAccess::reserve(ctx, emb_b + ydir_b + 2 * out_b + hs_b + cs_b + ws_b));
  Scalar* emb = reinterpret_cast<Scalar*>(base);
  Scalar* ydir = reinterpret_cast<Scalar*>(base + emb_b);
  Scalar* outs[2] = {reinterpret_cast<Scalar*>(base + emb_b + ydir_b),
                     reinterpret_cast<Scalar*>(base + emb_b + ydir_b + out_b)};
  Scalar* hscratch = reinterpret_cast<Scalar*>(base + emb_b + ydir_b + 2 * out_b);
  Scalar* cscratch = reinterpret_cast<Scalar*>(base + emb_b + ydir_b + 2 * out_b + hs_b);
  Scalar* ws = reinterpret_cast<Scalar*>(base + emb_b + ydir_b + 2 * out_b + hs_b + cs_b);

  const FlushDenormals fp;  // the head's bias sum too (fpenv.h)
  const Scalar* inp = x;
  if (tokens) {
    const std::int64_t V = c.vocab_size;
    for (std::int64_t i = 0; i < T * N; ++i)
      FUSEDRNN_REQUIRE(tokens[i] >= 0 && tokens[i] < V,
              std::string(fn) + ": tokens[" + std::to_string(i / N) + ", " +
                  std::to_string(i % N) + "] = " + std::to_string(tokens[i]) +
                  " is outside [0, vocab_size=" + std::to_string(V) + ")");
    const Scalar* table = static_cast<const Scalar*>(m.embed);
    for (std::int64_t i = 0; i < T * N; ++i)
      std::memcpy(emb + i * E, table + tokens[i] * E, std::size_t(E) * S);
    inp = emb;
  }

  for (std::int64_t l = 0; l < L; ++l) {
    // The last layer of a bare-layer model writes straight into y.
    Scalar* out = (l == L - 1 && !c.has_head) ? y : outs[l % 2];
    for (int d = 0; d < D; ++d) {
      const detail::LayerWeights& w = m.layers[std::size_t(l * D + d)];
      const std::int64_t idx = l * D + d;
      const Dims dims{T, N, w.C, H, P};
      Options opt;
      opt.reverse = d == 1;
      opt.num_threads = ctx.num_threads();
      opt.precision = precision;
      auto p = [](const void* v) { return static_cast<const Scalar*>(v); };
      Scalar* yd = D == 1 ? out : ydir;
      Scalar* hn = h_n ? h_n + idx * N * R : hscratch;
      const Scalar* h0d = h0 ? h0 + idx * N * R : nullptr;
      // The tensors every cell takes; inference (no cache).
      auto common = [&](auto a) {
        a.x = inp, a.w_ih = p(w.w_ih), a.w_hh = p(w.w_hh), a.b_ih = p(w.b_ih);
        a.b_hh = p(w.b_hh), a.h0 = h0d, a.lengths = lengths, a.y = yd, a.h_n = hn;
        return a;
      };
      if (c.regularised_kernel() && lstm) {  // issue 19's options (set_regularised)
        LstmLnForwardArgs<Scalar> a = common(LstmLnForwardArgs<Scalar>{});
        detail::set_regularised<Scalar>(a, c, w);
        a.c0 = c0 ? c0 + idx * N * H : nullptr;
        a.c_n = c_n ? c_n + idx * N * H : cscratch;
        lstm_ln_forward(dims, a, opt, ws);
      } else if (c.regularised_kernel()) {
        GruLnForwardArgs<Scalar> a = common(GruLnForwardArgs<Scalar>{});
        detail::set_regularised<Scalar>(a, c, w);
        gru_ln_forward(dims, a, opt, ws);
      } else if (lstm) {
        LstmForwardArgs<Scalar> a = common(LstmForwardArgs<Scalar>{});
        a.c0 = c0 ? c0 + idx * N * H : nullptr;
        a.w_peep = p(w.w_peep), a.w_hr = p(w.w_hr);
        a.c_n = c_n ? c_n + idx * N * H : cscratch;
        lstm_forward(dims, a, opt, ws);
      } else if (c.cell == CellType::gru) {
        GruForwardArgs<Scalar> a = common(GruForwardArgs<Scalar>{});
        a.variant = c.variant;
        gru_forward(dims, a, opt, ws);
      } else {
        RnnForwardArgs<Scalar> a = common(RnnForwardArgs<Scalar>{});
        a.nonlinearity = c.nonlinearity;
        rnn_forward(dims, a, opt, ws);
      }
      if (D == 2)  // out[:, :, d*R:(d+1)*R] = yd
        for (std::int64_t i = 0; i < T * N; ++i)
          std::memcpy(out + i * DR + d * R, yd + i * R, std::size_t(R) * S);
    }
    inp = out;
  }
  detail::ContextAccess::set_output(ctx, inp);
  if (!c.has_head) return;
  // y = out head.weightᵀ + head.bias (the per-step Linear).
  const std::int64_t O = c.output_size;
  const isa::Kernels<Scalar>& ops = isa::kernels<Scalar>();
  ops.gemm(T * N, O, DR, inp, DR, reinterpret_cast<const Scalar*>(m.head_packed.data()), y, O,
           ctx.num_threads());
  const Scalar* b = static_cast<const Scalar*>(m.head_b);
  for (std::int64_t i = 0; i < T * N; ++i)
    for (std::int64_t o = 0; o < O; ++o) y[i * O + o] += b[o];
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Context

Context::Context(int num_threads) : num_threads_(num_threads) {
  if (num_threads < 0 || num_threads > kMaxThreads)
    throw std::invalid_argument("fusedrnn::Context: num_threads must lie in [0, " +
                                std::to_string(kMaxThreads) + "] (0: OpenMP's default), got " +
                                std::to_string(num_threads));
}
Context::~Context() {
  if (buffer_) ::operator delete(buffer_, std::align_val_t(internal::kAlign));
}
Context::Context(Context&& o) noexcept
    : buffer_(o.buffer_), capacity_(o.capacity_), num_threads_(o.num_threads_),
      rnn_output_(o.rnn_output_) {
  o.buffer_ = nullptr, o.capacity_ = 0, o.rnn_output_ = nullptr;
}
Context& Context::operator=(Context&& o) noexcept {
  if (this != &o) {
    if (buffer_) ::operator delete(buffer_, std::align_val_t(internal::kAlign));
    buffer_ = o.buffer_, capacity_ = o.capacity_, num_threads_ = o.num_threads_;
    rnn_output_ = o.rnn_output_;
    o.buffer_ = nullptr, o.capacity_ = 0, o.rnn_output_ = nullptr;
  }
  return *this;
}
void* Context::reserve(std::size_t bytes) {
  if (bytes > capacity_ || !buffer_) {
    if (buffer_) ::operator delete(buffer_, std::align_val_t(internal::kAlign));
    buffer_ = nullptr, capacity_ = 0, rnn_output_ = nullptr;
    buffer_ = ::operator new(std::max<std::size_t>(bytes, internal::kAlign),
                             std::align_val_t(internal::kAlign));
    capacity_ = std::max<std::size_t>(bytes, internal::kAlign);
  }
  return buffer_;
}

// ---------------------------------------------------------------------------------------------
// Model

namespace {
// What the int8 kernels refuse at their call, refused here, once: Model::forward would have
// thrown after earlier layers had written their final states, and a Stream's step(), which
// cannot throw, terminated the program (the depth bound is checked at every call; the weights
// of a Model never change).
void check_int8_weights(const detail::ModelImpl& m) {
  const ModelConfig& c = m.config;
  const std::int64_t H = c.hidden_size, R = c.state_size();
  const std::int64_t G = c.cell == CellType::lstm ? 4 : c.cell == CellType::gru ? 3 : 1;
  const int D = c.num_directions();
  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    const detail::LayerWeights& w = m.layers[l];
    const std::string name = "_l" + std::to_string(l / D) + (l % D ? "_reverse" : "");
    if (std::max(w.C, H) > lowp::kMaxS8Depth)
      throw std::invalid_argument(
          "fusedrnn::Model: precision int8 needs input_size and hidden_size <= " +
          std::to_string(lowp::kMaxS8Depth) + " (the int32 sums of 127^2 products), got " +
          std::to_string(w.C) + " and " + std::to_string(H) + " in layer " +
          std::to_string(l / D));
    // (the kernels' own check, which a forward would meet after earlier layers had run)
    lowp::check_finite_weights("fusedrnn::Model", "weight_ih" + name,
                               static_cast<const float*>(w.w_ih), G * H * w.C);
    lowp::check_finite_weights("fusedrnn::Model", "weight_hh" + name,
                               static_cast<const float*>(w.w_hh), G * H * R);
  }
}
}  // namespace

Model::Model(std::shared_ptr<const ModelImpl> impl, Precision precision)
    : impl_(std::move(impl)), precision_(precision) {
  if (precision != Precision::float32 && precision != Precision::bfloat16 &&
      precision != Precision::int8)
    throw std::invalid_argument("fusedrnn::Model: precision must be Precision::float32, "
                                "Precision::bfloat16 or Precision::int8");
  if (precision != Precision::float32 && impl_->config.dtype != DType::f32)
    throw std::invalid_argument(std::string("fusedrnn::Model: precision ") +
                                (precision == Precision::int8 ? "int8" : "bfloat16") +
                                " needs a float32 model; this one is " +
                                dtype_name(impl_->config.dtype));
  if (precision != Precision::float32 && impl_->config.regularised_kernel())
    throw ConfigError(std::string("fusedrnn::Model: precision ") +
                      (precision == Precision::int8 ? "int8" : "bfloat16") +
                      " has no path for layer_norm or zoneout (issue 19's regularised kernels "
                      "are float32 / float64); load with "
                      "Precision::float32");
  if (precision == Precision::int8) check_int8_weights(*impl_);
}

Model Model::from_tensor_file(const TensorFile& file, Precision precision) {
  return Model(build(file), precision);
}

Model Model::load(const std::string& path, Precision precision) {
  return from_tensor_file(TensorFile::load(path), precision);
}

Model Model::from_bytes(const void* data, std::size_t size, const std::string& where,
                        Precision precision) {
  if (!data && size) throw std::invalid_argument("Model::from_bytes: data is null");
  const auto* p = static_cast<const unsigned char*>(data);
  return from_tensor_file(TensorFile::parse(std::vector<unsigned char>(p, p + size), where),
                          precision);
}

Model Model::with_precision(Precision precision) const { return Model(impl_, precision); }

const ModelConfig& Model::config() const noexcept { return impl_->config; }
const std::string& Model::config_json() const noexcept { return impl_->config_json; }
const JsonValue& Model::metadata() const noexcept { return impl_->metadata; }
const std::string& Model::metadata_json() const noexcept { return impl_->metadata_json; }
const std::string& Model::fusedrnn_version() const noexcept { return impl_->fusedrnn_version; }
const std::vector<Parameter>& Model::parameters() const noexcept { return impl_->params; }
std::int64_t Model::num_states() const noexcept {
  return config().num_layers * config().num_directions();
}

const Parameter* Model::find_parameter(std::string_view name) const noexcept {
  for (const Parameter& p : impl_->params)
    if (p.name == name) return &p;
  return nullptr;
}
const Parameter& Model::parameter(std::string_view name) const {
  const Parameter* p = find_parameter(name);
  if (!p) throw std::invalid_argument("Model::parameter: no parameter named " + quoted(name));
  return *p;
}

template <typename Scalar>
void Model::forward(std::int64_t T, std::int64_t N, const Scalar* x, const Scalar* h0,
                    const Scalar* c0, const std::int64_t* lengths, Scalar* y, Scalar* h_n,
                    Scalar* c_n, Context* ctx) const {
  Context local;
  run<Scalar>(*impl_, precision_, "Model::forward", T, N, x, nullptr, h0, c0, lengths, y, h_n, c_n,
              ctx ? *ctx : local);
}

template <typename Scalar>
void Model::forward_tokens(std::int64_t T, std::int64_t N, const std::int64_t* tokens,
                           const Scalar* h0, const Scalar* c0, const std::int64_t* lengths,
                           Scalar* y, Scalar* h_n, Scalar* c_n, Context* ctx) const {
  if (!tokens) throw std::invalid_argument("Model::forward_tokens: tokens must not be null");
  Context local;
  run<Scalar>(*impl_, precision_, "Model::forward_tokens", T, N, nullptr, tokens, h0, c0, lengths, y, h_n,
              c_n, ctx ? *ctx : local);
}

template <typename Scalar>
std::vector<std::vector<std::int64_t>> Model::ctc_greedy_decode(std::int64_t T, std::int64_t N,
                                                                const Scalar* x,
                                                                const std::int64_t* lengths,
                                                                std::int64_t blank,
                                                                Context* ctx) const {
  const std::int64_t K = output_size();
  if (blank < 0 || blank >= K)
    throw std::invalid_argument("Model::ctc_greedy_decode: blank must be in [0, output_size=" +
                                std::to_string(K) + "), got " + std::to_string(blank));
  if (T < 1 || N < 1)
    throw std::invalid_argument("Model::ctc_greedy_decode: T and N must be >= 1, got " +
                                std::to_string(T) + ", " + std::to_string(N));
  // (N * K itself may overflow: compare by division)
  if (N > (std::int64_t(1) << 40) / K || T > (std::int64_t(1) << 40) / (N * K))
    throw std::invalid_argument("Model::ctc_greedy_decode: T * N * output_size is too large");
  std::vector<Scalar> scores(std::size_t(T * N * K));
  forward<Scalar>(T, N, x, nullptr, nullptr, lengths, scores.data(), nullptr, nullptr, ctx);
  return fusedrnn::ctc_greedy_decode<Scalar>(T, N, K, scores.data(), lengths, blank);
}

#define FUSEDRNN_INSTANTIATE_MODEL(Scalar)                                                     \
  template void Model::forward<Scalar>(std::int64_t, std::int64_t, const Scalar*,              \
                                       const Scalar*, const Scalar*, const std::int64_t*,      \
                                       Scalar*, Scalar*, Scalar*, Context*) const;             \
  template void Model::forward_tokens<Scalar>(std::int64_t, std::int64_t, const std::int64_t*, \
                                              const Scalar*, const Scalar*,                    \
                                              const std::int64_t*, Scalar*, Scalar*, Scalar*,  \
                                              Context*) const;                         \
  template std::vector<std::vector<std::int64_t>> Model::ctc_greedy_decode<Scalar>(            \
      std::int64_t, std::int64_t, const Scalar*, const std::int64_t*, std::int64_t, Context*)  \
      const;
FUSEDRNN_INSTANTIATE_MODEL(float)
FUSEDRNN_INSTANTIATE_MODEL(double)

}  // namespace fusedrnn
