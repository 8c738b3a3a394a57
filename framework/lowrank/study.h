// The post-hoc KV-compression study (docs/lowrank.md, "The study"): learned MLA against an
// MHA model compressed after training by each low-rank approximator, at equal KV-cache
// budgets (elements per token per layer). This header holds the study's config and its
// measurements; experiments/cmd_study.cpp (`kvlab lowrank-study`) runs it.
//
// Study config (YAML; every key but tasks is optional):
//   name: lowrank-study               results/<name>.h5, results/<name>.md
//   output: results/lowrank-study.h5  the results file; the Markdown table goes next to it
//                                     (<stem>.md), compressed checkpoints into <stem>.compressed/
//   methods: [svd, qrcp, rsvd, cur]   low-rank approximators (kvlab list)
//   data_aware: [false, true]         weight-only and/or data-aware (SVD-LLM whitening)
//   calib_batches: 8                  training batches for data-aware calibration and the K/V spectra
//   kv_eval_batches: 4                validation batches for the K/V activation errors
//   seed: 0                           compression seed (rsvd, calibration batches)
//   jobs: 2                           training runs at a time (worker processes)
//   tasks:                            one entry per task, in order; the key names the task
//     text:
//       config: tinyshakespeare.yaml  the MHA base's train config (config.md; mha, gqa or mqa),
//                                     next to this file, else as given
//       set: {train.steps: 800}       overrides of that config (as --set)
//       budgets: [48, 80, 128]        KV-cache elements per token per layer
//       mla: {qk_rope_head_dim: 16, q_lora_rank: 0}   MLA at budget b: kv_lora_rank = b − qk_rope_head_dim
//       finetune: {steps: 150, set: {train.lr: 3.0e-4}}   0 steps = no fine-tuning
#pragma once

#include "config/loader.h"
#include "core/tensor.h"
#include "io/results.h"
#include "model/transformer.h"
#include "tasks/task.h"

#include <optional>
#include <string>
#include <vector>

namespace kvlab {

struct StudyTask {
    std::string name;                  // the tasks: key; run ids start with it
    std::string config;                // the base config file (resolved)
    std::vector<Override> set;         // overrides of it
    std::vector<int> budgets;          // increasing
    int mla_rope_head_dim = 16;        // d_R
    int mla_q_lora_rank = 0;
    int finetune_steps = 150;          // 0 = none
    std::vector<Override> finetune_set;
    ExperimentConfig base;             // the loaded base config (model, data, train)
    int n_kv_heads = 0;                // G of the base
    int max_rank = 0;                  // min(2·G·dh, d_model): the largest latent_kv rank
};

struct StudyConfig {
    std::string name = "lowrank-study";
    std::string output;
    std::vector<std::string> methods = {"svd", "qrcp", "rsvd", "cur"};
    std::vector<bool> data_aware = {false, true};
    int calib_batches = 8;
    int kv_eval_batches = 4;
    uint64_t seed = 0;
    int jobs = 2;
    std::vector<StudyTask> tasks;
    std::string source, text;          // the file and its YAML text

    std::string results_path() const;  // output, else results/<name>.h5
    std::string markdown_path() const; // <results stem>.md
    std::string checkpoint_dir() const;// <results stem>.compressed
};

// Reads and checks a study config, and loads and checks every task's base config (its
// messages carry that file's positions). kvlab::Error listing every problem of the study
// file at once: unknown keys, bad values, budgets the base cannot hold.
StudyConfig load_study_config(const std::string& path);

// Loss over the first `batches` validation batches, weighted by scored tokens, and the
// accuracy on tasks that score answers: the trainer's end-of-run evaluation.
struct ValEval {
    double loss = 0;
    std::optional<double> accuracy;
};
ValEval evaluate_val(Transformer<float>& model, const Task& task, int batches, int batch_size);

// Layer l's stacked K/V projection W = [wk; wv] [2·G·dh, D] of an mha/gqa/mqa parameter
// set, or W' = [w_uk; w_uv]·w_dkv of a latent_kv one.
MatD kv_weight(const ParamSet& p, int layer);

// Per layer, on `batches` validation batches: how far the compressed model's cached K/V
// (pre-RoPE; RoPE rotates both alike, so norms of differences are unchanged) are from
// the original's. X_o, X_c are each model's own attention inputs of layer l.
//   isolated:   ‖X_o (W − W')ᵀ‖_F / ‖X_o Wᵀ‖_F      this layer's error alone
//   end_to_end: ‖X_c W'ᵀ − X_o Wᵀ‖_F / ‖X_o Wᵀ‖_F    with the earlier layers' errors propagated
struct KvErrors {
    std::vector<double> isolated, end_to_end;
};
KvErrors kv_activation_errors(Transformer<float>& orig, const ParamSet& orig_params, Transformer<float>& comp,
                              const ParamSet& comp_params, const Task& task, int batches, int batch_size);

// Singular values (descending) of W = [wk; wv] and, given Σ XᵀX over n_tokens calibration
// tokens, of the K/V activations per token: sqrt(eig(W XᵀX Wᵀ / n_tokens)).
Eigen::VectorXd weight_spectrum(const MatD& W);
Eigen::VectorXd activation_spectrum(const MatD& W, const MatD& gram, double n_tokens);

}  // namespace kvlab
