// The embedded default experiment: MQAR, needs no files. `kvlab train` with no CONFIG
// runs it; configs/mqar.yaml holds the same text (a test keeps them equal).
#pragma once

namespace kvlab {

inline constexpr const char* kDefaultConfig = R"(# MQAR (multi-query associative recall), the embedded default: no data files needed.
name: mqar
seed: 0
model:
  attention: mha
  d_model: 64
  n_layers: 2
  n_heads: 4
  head_dim: 16
  mlp_hidden: 172
data:
  task: mqar
  seq_len: 64
  num_kv_pairs: 8
train:
  steps: 2000
  batch_size: 64
  lr: 1.0e-3
  min_lr: 1.0e-4
  warmup_steps: 100
  weight_decay: 0.1
  betas: [0.9, 0.95]
  grad_clip: 1.0
  eval_every: 200
  eval_batches: 8
)";

}  // namespace kvlab
