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

// The parameters a checkpoint spec names. The forms (kvlab compress and train.init_from):
//   FILE.h5              a checkpoint holding /params (kvlab compress's output, a gradient
//                        dump), or a results file with exactly one run (that run's params)
//   FILE.h5:/runs/<id>   run <id> of a results file; it must be "completed"
//   FILE.h5:/group       any group in model.md's /params layout
// kvlab::Error naming the file and what to write instead (a results file with several
// runs lists them).
struct CheckpointSource {
    ParamSet params;
    std::string what;         // "FILE.h5:/runs/<id>/params", for messages
    std::string run_config;   // the run's resolved YAML when the parameters are a run's, else ""
};
CheckpointSource read_checkpoint(const std::string& spec);

// train.init_from: copies the named checkpoint's tensors into m (whose dimensions come
// from the config). Every tensor of m must be present with the same shape and nothing
// else may be: kvlab::Error naming the first mismatch. Hyper-parameters without tensors
// (rope_theta, norm_eps) are the config's.
template <class S>
void init_from_checkpoint(Transformer<S>& m, const std::string& spec);

}  // namespace kvlab
