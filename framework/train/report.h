// The comparison table of a results file (`kvlab report`), in the shape of DeepSeek-V2's
// Table 1 (arXiv 2405.04434): one row per attention variant configuration with how it
// shares and shrinks the KV cache, the cache per token, the parameter count, and the
// capability measured here (mean ± sample std over seeds).
//
// Rows: completed runs grouped by their resolved config (the `config` attribute) without
// seed, train.lr, train.threads, name and output.path, and without model keys that the
// run's attention plugin does not own (a sweep over [mha, mla] keeps kv_lora_rank in every
// point's config). When a row has runs at several train.lr values, the lr with the best
// mean metric is picked (lower val_loss, or higher val_accuracy) and only its runs are
// aggregated. Failed and unfinished runs are listed apart and left out.
#pragma once

#include "io/results.h"

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace kvlab {

// The metric that picks the learning rate. automatic: val_accuracy where a row has it
// (MQAR), else val_loss.
enum class ReportMetric { automatic, val_loss, val_accuracy };
// "auto" | "val_loss" | "val_accuracy"; kvlab::Error otherwise.
ReportMetric parse_report_metric(const std::string& s);

struct MeanStd {
    double mean = std::numeric_limits<double>::quiet_NaN();
    double std = std::numeric_limits<double>::quiet_NaN();   // sample std (n - 1); NaN for n < 2
    int n = 0;
};
MeanStd mean_std(const std::vector<double>& xs);

struct ReportRow {
    std::string variant;      // "gqa (n_kv_heads 2)", plus the keys that differ between rows ("num_kv_pairs 8")
    std::string attention;    // plugin name
    std::string task;         // data.task
    std::string kv_sharing;   // keys per query head: "1 K/V head per query head", "latent: ..."
    std::string reduction;    // how the cache is reduced
    std::string formula;      // the paper's formula on these dims, "2·2·16·2" ("" for other plugins)
    int64_t kv_elements_per_token = 0, kv_bytes_per_token = 0, n_params = 0;
    double lr = 0;                 // the picked learning rate
    std::vector<double> lrs;       // every learning rate with a completed run, ascending
    std::string metric;            // "val_loss" or "val_accuracy": what picked lr
    MeanStd val_loss, val_bits_per_byte, val_accuracy;   // over the runs at lr
    std::vector<std::string> run_ids;                    // the runs at lr
};

struct Report {
    std::vector<ReportRow> rows;                                  // in order of first appearance
    std::vector<std::pair<std::string, std::string>> failed;      // run id, error
    std::vector<std::pair<std::string, std::string>> unfinished;  // run id, status ("running", ...)
};

// Checks what build_report relies on, naming `file` and the run: a status that is a
// string, and for completed runs a config string and a numeric final/val_loss.
// kvlab::Error for the first run that breaks a rule (a damaged or foreign file).
void check_report_runs(const std::vector<RunRecord>& runs, const std::string& file);
Report build_report(const std::vector<RunRecord>& runs, ReportMetric metric = ReportMetric::automatic);

// A Markdown table, then the failed and unfinished runs.
std::string report_markdown(const Report& r);
// CSV with a header row, one line per row (RFC 4180 quoting); no failed-run list.
std::string report_csv(const Report& r);

// The resolved config text of a run (dump_config's layout) as dotted keys and scalar
// values in file order ("model.d_model" -> "64"); comments dropped, quotes removed. It
// needs no data files, unlike re-loading the config.
std::vector<std::pair<std::string, std::string>> flatten_resolved_config(const std::string& yaml);

}  // namespace kvlab
