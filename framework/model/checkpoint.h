// Conversion between a Transformer and model.md's parameter layout (io/results.h's
// ParamSet): one dataset per parameter named by its dotted path, the hyper-parameters
// as attributes plus `attention` and `format_version` = 1. The tensor list comes from
// the model's own ParamSpec list; nothing here names tensors by hand.
#pragma once

#include "io/results.h"
#include "model/transformer.h"

namespace kvlab {

// Checkpoint attributes for a model: integers as int64, rope_theta/norm_eps as float64.
template <class S>
Attrs model_attrs(const Transformer<S>& m);

template <class S>
ParamSet to_param_set(const Transformer<S>& m);
template <class S>
ParamSet grads_to_param_set(const Transformer<S>& m);

// Copies p's tensors into m. Throws kvlab::Error naming the first missing, extra or
// mis-shaped tensor, with `what` (e.g. the file name) for context.
template <class S>
void load_param_set(Transformer<S>& m, const ParamSet& p, const std::string& what);

// The model config a checkpoint describes (its attributes).
ModelConfig model_config_from_attrs(const Attrs& attrs, const std::string& what);

}  // namespace kvlab
