// The config loader (config/loader.h): types, defaults, positions in messages, --set,
// plugin/task validation, the data file lookup, the resolved dump and sweeps.
#include "config/loader.h"
#include "support/env.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

using namespace kvlab;
using kvlab::test::ScopedEnv;
namespace fs = std::filesystem;

namespace {

// A private directory with a small text file (per process: ctest may run tests in parallel).
const fs::path& test_dir() {
    static const fs::path dir = [] {
        fs::path d = fs::temp_directory_path() / ("kvlab_test_config_" + std::to_string(getpid()));
        fs::create_directories(d / "data");
        std::ofstream out(d / "data" / "tiny.txt");
        for (int i = 0; i < 200; ++i) out << "To be, or not to be, that is the question.\n";
        return d;
    }();
    return dir;
}

// The config "file" name used in messages; data lookups start next to it.
std::string cfg_name() { return (test_dir() / "cfg.yaml").string(); }

// For doctest::Contains, which takes a doctest::String.
doctest::String at(const std::string& s) { return doctest::String(s.c_str()); }

// A valid small mqar config; `extra` is appended (more sections, or keys of train:).
std::string mqar_yaml(const std::string& extra = "") {
    return "name: t\n"              // 1
           "model:\n"               // 2
           "  attention: gqa\n"     // 3
           "  d_model: 32\n"        // 4
           "  n_layers: 1\n"        // 5
           "  n_heads: 4\n"         // 6
           "  head_dim: 8\n"        // 7
           "  n_kv_heads: 2\n"      // 8
           "  mlp_hidden: 64\n"     // 9
           "data:\n"                // 10
           "  task: mqar\n"         // 11
           "  seq_len: 32\n"        // 12
           "  num_kv_pairs: 4\n"    // 13
           "train:\n"               // 14
           "  steps: 10\n"          // 15
           + extra;
}

ExperimentConfig load(const std::string& yaml, const std::vector<std::string>& sets = {}) {
    std::vector<Override> ov;
    for (const auto& s : sets) ov.push_back(parse_override(s));
    return load_config_text(yaml, cfg_name(), ov);
}

const char* const kFullYaml = R"(name: compare-attention
seed: 3
model:
  attention: mla
  vocab_size: 256
  d_model: 64
  n_layers: 2
  n_heads: 4
  head_dim: 16
  n_kv_heads: 2
  kv_lora_rank: 32
  q_lora_rank: 48
  qk_rope_head_dim: 8
  mlp_hidden: 172
  rope_theta: 500000
  norm_eps: 1.0e-5
  tie_embeddings: true
data:
  task: text
  path: data/tiny.txt
  seq_len: 32
  val_fraction: 0.2
train:
  steps: 500
  batch_size: 8
  lr: 3.0e-3
  min_lr: 3.0e-4
  warmup_steps: 20
  weight_decay: 0.05
  betas: [0.8, 0.99]
  adam_eps: 1.0e-9
  grad_clip: 0.5
  eval_every: 50
  eval_batches: 5
  log_every: 5
  threads: 2
output:
  path: out/cmp.h5
)";

}  // namespace

TEST_CASE("config: a full valid config is read into the typed structs") {
    const auto c = load(kFullYaml);
    CHECK(c.name == "compare-attention");
    CHECK(c.run_id == "compare-attention");
    CHECK(c.seed == 3);
    CHECK(c.model.attention == "mla");
    CHECK(c.model.d_model == 64);
    CHECK(c.model.head_dim == 16);
    CHECK(c.model.mlp_hidden == 172);
    CHECK(c.model.rope_theta == 500000.0);
    CHECK(c.model.norm_eps == 1e-5);
    CHECK(c.model.tie_embeddings);
    CHECK(c.model.plugin_int("kv_lora_rank") == 32);
    CHECK(c.model.plugin_int("q_lora_rank", 0) == 48);
    CHECK(c.model.plugin_int("n_kv_heads") == 2);
    CHECK(c.data.task == "text");
    CHECK(c.data.path == "data/tiny.txt");
    CHECK(fs::equivalent(c.data.resolved_path, test_dir() / "data" / "tiny.txt"));
    CHECK(c.data.val_fraction == 0.2);
    CHECK(c.train.steps == 500);
    CHECK(c.train.lr == 3e-3);
    CHECK(c.train.beta1 == 0.8);
    CHECK(c.train.beta2 == 0.99);
    CHECK(c.train.adam_eps == 1e-9);
    CHECK(c.train.log_every == 5);
    CHECK(c.train.threads == 2);
    CHECK(c.results_path() == "out/cmp.h5");
    CHECK(c.sweep.empty());
    CHECK(c.resolved_yaml == dump_config(c));
}

TEST_CASE("config: keys left out take config.md's defaults") {
    const auto c = load(mqar_yaml());
    CHECK(c.seed == 0);
    CHECK(c.model.vocab_size == 256);
    CHECK(c.model.rope_theta == 10000.0);
    CHECK(c.model.norm_eps == 1e-6);
    CHECK_FALSE(c.model.tie_embeddings);
    CHECK_FALSE(c.model.has("kv_lora_rank"));
    CHECK(c.data.num_queries == 0);
    CHECK(c.train.batch_size == 32);
    CHECK(c.train.lr == 1e-3);
    CHECK(c.train.min_lr == 1e-4);
    CHECK(c.train.warmup_steps == 100);
    CHECK(c.train.weight_decay == 0.1);
    CHECK(c.train.beta1 == 0.9);
    CHECK(c.train.beta2 == 0.95);
    CHECK(c.train.grad_clip == 1.0);
    CHECK(c.train.eval_every == 100);
    CHECK(c.train.eval_batches == 50);
    CHECK(c.train.threads == 0);
    CHECK(c.results_path() == "results/t.h5");
}

TEST_CASE("config: unknown keys are all reported with their positions and the allowed keys") {
    const std::string yaml = mqar_yaml("  lerning_rate: 0.1\nmodle:\n  x: 1\n");
    CHECK_THROWS_WITH_AS(load(yaml), doctest::Contains(at(cfg_name()) + ":16:3: train.lerning_rate: unknown key; allowed: steps"),
                         Error);
    CHECK_THROWS_WITH_AS(load(yaml), doctest::Contains(at(cfg_name()) + ":17:1: modle: unknown key; did you mean model?"),
                         Error);
    // A key that some attention plugin owns is allowed; others are not.
    CHECK_THROWS_WITH_AS(load(mqar_yaml() + "  foo: 1\n"), doctest::Contains("train.foo: unknown key"), Error);
    const std::string model_typo = "model:\n  d_model: 8\n  n_kv_head: 2\n";
    CHECK_THROWS_WITH_AS(load(model_typo), doctest::Contains(":3:3: model.n_kv_head: unknown key; did you mean n_kv_heads?"),
                         Error);
    CHECK_THROWS_WITH_AS(load(model_typo), doctest::Contains("kv_lora_rank"), Error);   // the allowed list
}

TEST_CASE("config: a key given twice in one map is an error") {
    CHECK_THROWS_WITH_AS(load(mqar_yaml("  steps: 20\n")),
                         doctest::Contains(at(cfg_name()) + ":16:3: train.steps: duplicate key (first given at " + at(cfg_name()) + ":15:3)"),
                         ConfigError);
}

TEST_CASE("config: a value of the wrong type names the key, line and column") {
    std::string yaml = mqar_yaml();
    yaml.replace(yaml.find("n_layers: 1"), 11, "n_layers: two");
    std::string plugin_key = mqar_yaml();   // a key owned by a plugin (gqa)
    plugin_key.replace(plugin_key.find("n_kv_heads: 2"), 13, "n_kv_heads: two");
    CHECK_THROWS_WITH_AS(load(plugin_key),
                         doctest::Contains(at(cfg_name()) + ":8:15: model.n_kv_heads: expected an integer, got \"two\""),
                         ConfigError);
    CHECK_THROWS_WITH_AS(load(yaml), doctest::Contains(at(cfg_name()) + ":5:13: model.n_layers: expected an integer, got \"two\""),
                         ConfigError);
    CHECK_THROWS_WITH_AS(load(mqar_yaml("  betas: [0.9]\n")),
                         doctest::Contains(":16:10: train.betas: expected a list of two numbers, got a list of 1"), Error);
    CHECK_THROWS_WITH_AS(load(mqar_yaml("  lr: fast\n")), doctest::Contains(":16:7: train.lr: expected a number"), Error);
    CHECK_THROWS_WITH_AS(load(mqar_yaml("seed: -1\n")), doctest::Contains("seed: expected a non-negative integer"), Error);
    std::string quoted = mqar_yaml();
    quoted.replace(quoted.find("d_model: 32"), 11, "d_model: \"32\"");
    CHECK_THROWS_WITH_AS(load(quoted), doctest::Contains("model.d_model: expected an integer, got the quoted string \"32\""),
                         Error);
}

TEST_CASE("config: missing required keys are reported at their section") {
    std::string yaml = mqar_yaml();
    yaml.erase(yaml.find("  d_model: 32\n"), 14);
    CHECK_THROWS_WITH_AS(load(yaml), doctest::Contains(at(cfg_name()) + ":3:3: model.d_model: missing required key"), ConfigError);
    // Without train: and model: every required key is named, one line each.
    const std::string bare = "name: t\ndata:\n  task: mqar\n";
    for (const char* key : {"model.d_model", "model.n_layers", "model.n_heads", "model.head_dim", "model.mlp_hidden",
                            "train.steps"})
        CHECK_THROWS_WITH_AS(load(bare), doctest::Contains(at(cfg_name()) + ":1:1: " + key + ": missing required key"), Error);
}

TEST_CASE("config: --set overrides the file and is checked like the file, at <--set>") {
    const auto c = load(mqar_yaml(), {"model.d_model=48", "train.betas=[0.5, 0.6]", "seed=7", "output.path=x.h5"});
    CHECK(c.model.d_model == 48);
    CHECK(c.train.beta1 == 0.5);
    CHECK(c.seed == 7);
    CHECK(c.results_path() == "x.h5");
    CHECK(c.overrides.size() == 4);
    CHECK_THROWS_WITH_AS(load(mqar_yaml(), {"model.d_model=abc"}),
                         doctest::Contains("<--set>: model.d_model: expected an integer, got \"abc\""), ConfigError);
    CHECK_THROWS_WITH_AS(load(mqar_yaml(), {"model.foo=1"}), doctest::Contains("<--set>: model.foo: unknown key"), Error);
    CHECK_THROWS_WITH_AS(load(mqar_yaml(), {"name.x=1"}), doctest::Contains("<--set>: name.x: cannot set it"), Error);
    CHECK_THROWS_WITH_AS(load(mqar_yaml(), {"data.seq_len=1"}), doctest::Contains("<--set>: data.seq_len: must be >= 2"),
                         Error);
    CHECK_THROWS_WITH_AS(parse_override("model.d_model"), doctest::Contains("expected key=value"), Error);
    CHECK(parse_override(" model.d_model = 256 ").value == "256");
}

TEST_CASE("config: an unknown attention plugin lists the registered ones") {
    std::string yaml = mqar_yaml();
    yaml.replace(yaml.find("attention: gqa"), 14, "attention: gqa2");
    CHECK_THROWS_WITH_AS(load(yaml),
                         doctest::Contains(at(cfg_name()) + ":3:14: model.attention: unknown plugin \"gqa2\"; registered: mha, gqa, mqa"),
                         ConfigError);
    yaml = mqar_yaml();
    yaml.replace(yaml.find("task: mqar"), 10, "task: txt");
    CHECK_THROWS_WITH_AS(load(yaml), doctest::Contains(":11:9: data.task: unknown task \"txt\""), ConfigError);
}

TEST_CASE("config: the plugin's own check is reported at the key's line (gqa heads not divisible)") {
    std::string yaml = mqar_yaml();
    yaml.replace(yaml.find("n_kv_heads: 2"), 13, "n_kv_heads: 3");
    CHECK_THROWS_WITH_AS(load(yaml), doctest::Contains(at(cfg_name()) + ":8:15: model.n_kv_heads: n_heads (4) must be divisible"),
                         ConfigError);
    // A required plugin key that is absent is reported at its section; a non-integer one too.
    CHECK_THROWS_WITH_AS(load(mqar_yaml(), {"model.attention=mla"}),
                         doctest::Contains(at(cfg_name()) + ":3:3: model.kv_lora_rank: mla needs kv_lora_rank"), ConfigError);
    CHECK_THROWS_WITH_AS(load(mqar_yaml(), {"model.attention=mla", "model.kv_lora_rank=2.5", "model.qk_rope_head_dim=4"}),
                         doctest::Contains("<--set>: model.kv_lora_rank: expected an integer, got \"2.5\""), ConfigError);
    // An odd head_dim for a plugin that rotates whole heads: the plugin's error, not RoPE's
    // internal check (a fuzzer input reached that one first for mha/gqa/mqa).
    for (const char* plugin : {"mha", "gqa", "mqa", "latent_kv"}) {
        CAPTURE(plugin);
        std::vector<std::string> sets = {std::string("model.attention=") + plugin, "model.head_dim=7"};
        if (std::string(plugin) == "latent_kv") sets.push_back("model.latent_rank=4");
        CHECK_THROWS_WITH_AS(load(mqar_yaml(), sets),
                             doctest::Contains("model.head_dim: must be even for RoPE, got 7"), ConfigError);
    }
    // The task's own check, too.
    CHECK_THROWS_WITH_AS(load(mqar_yaml(), {"data.num_kv_pairs=200"}), doctest::Contains("<--set>: data.num_kv_pairs: must be in"),
                         ConfigError);
}

TEST_CASE("config: value rules, e.g. seq_len < 2, are checked and all reported") {
    std::string yaml = mqar_yaml("  lr: 0\n  betas: [0.9, 1.0]\n");
    yaml.replace(yaml.find("seq_len: 32"), 11, "seq_len: 1");
    CHECK_THROWS_WITH_AS(load(yaml), doctest::Contains(at(cfg_name()) + ":12:12: data.seq_len: must be >= 2"), Error);
    CHECK_THROWS_WITH_AS(load(yaml), doctest::Contains(":16:7: train.lr: must be > 0, got 0"), Error);
    CHECK_THROWS_WITH_AS(load(yaml), doctest::Contains(":17:10: train.betas: both must be in [0, 1)"), Error);
    CHECK_THROWS_WITH_AS(load(yaml), doctest::Contains("train.min_lr: must be in [0, lr = 0]"), Error);
    CHECK_THROWS_WITH_AS(load(mqar_yaml(), {"model.vocab_size=512"}), doctest::Contains("model.vocab_size: must be 256"),
                         ConfigError);
    CHECK_THROWS_WITH_AS(load(mqar_yaml(), {"name=a/b"}), doctest::Contains("name: must be usable as a file"), ConfigError);
}

TEST_CASE("config: the data file is looked up as given, next to the config, then in KVLAB_DATA_DIR") {
    const std::vector<std::string> text_sets = {"data.task=text", "data.path=tiny.txt"};
    {
        ScopedEnv env("KVLAB_DATA_DIR", (test_dir() / "nowhere").string());
        CHECK_THROWS_WITH_AS(load(mqar_yaml(), text_sets), doctest::Contains("data.path: file not found; tried: tiny.txt, "),
                             ConfigError);
        CHECK_THROWS_WITH_AS(load(mqar_yaml(), text_sets), doctest::Contains(at((test_dir() / "tiny.txt").string())), ConfigError);
    }
    {
        ScopedEnv env("KVLAB_DATA_DIR", (test_dir() / "data").string());
        const auto c = load(mqar_yaml(), text_sets);
        CHECK(fs::equivalent(c.data.resolved_path, test_dir() / "data" / "tiny.txt"));
    }
    const auto c = load(mqar_yaml(), {"data.task=text", "data.path=data/tiny.txt"});   // next to the config
    CHECK(fs::equivalent(c.data.resolved_path, test_dir() / "data" / "tiny.txt"));
}

TEST_CASE("config: a missing, unreadable or unparsable config file is an Error naming it") {
    CHECK_THROWS_WITH_AS(load_config((test_dir() / "nope.yaml").string()), doctest::Contains("nope.yaml: config file not found"),
                         Error);
    CHECK_THROWS_WITH_AS(load_config(test_dir().string()), doctest::Contains("is a directory"), Error);
    CHECK_THROWS_WITH_AS(load("model:\n  d_model: [1,\n"), doctest::Contains(at(cfg_name()) + ":3:"), Error);
    CHECK_THROWS_WITH_AS(load(""), doctest::Contains("the config is empty"), Error);
    CHECK_THROWS_WITH_AS(load("- 1\n- 2\n"), doctest::Contains("a config is a map of sections"), Error);
    const fs::path file = test_dir() / "ok.yaml";
    std::ofstream(file) << mqar_yaml();
    CHECK(load_config(file.string()).source == file.string());
}

TEST_CASE("config: dump_config writes every key and loads back to the same config") {
    const auto c = load(kFullYaml, {"train.lr=0.001"});
    const std::string dump = dump_config(c);
    CHECK(dump.find("adam_eps: 1.0e-09") != std::string::npos);   // a float for YAML 1.1 readers too
    CHECK(dump.find("num_kv_pairs: 8") != std::string::npos);     // defaults included
    CHECK(dump.find("kv_lora_rank: 32") != std::string::npos);
    const auto back = load_config_text(dump, cfg_name());
    CHECK(dump_config(back) == dump);
    CHECK(back.train.lr == 0.001);
    CHECK(back.model.plugin == c.model.plugin);
    CHECK(back.train.beta2 == c.train.beta2);
    CHECK(back.data.resolved_path == c.data.resolved_path);
    // The default output path is a comment, so a loaded-back config still follows `name`.
    const auto m = load(mqar_yaml());
    CHECK(load_config_text(dump_config(m), cfg_name(), {parse_override("name=other")}).results_path() == "results/other.h5");
}

TEST_CASE("config: a sweep is the Cartesian product of its axes in file order") {
    const auto base = load(mqar_yaml("sweep:\n  model.attention: [mha, mqa]\n  seed: [0, 1, 2]\n"));
    REQUIRE(base.sweep.size() == 2);
    const auto points = expand_sweep(base);
    REQUIRE(points.size() == 6);
    CHECK(points[0].run_id == "attention-mha_seed-0");
    CHECK(points[2].run_id == "attention-mha_seed-2");
    CHECK(points[3].run_id == "attention-mqa_seed-0");
    CHECK(points[5].model.attention == "mqa");
    CHECK(points[5].seed == 2);
    for (const auto& p : points) {
        CHECK(p.name == "t");
        CHECK(p.sweep.empty());
        CHECK(p.results_path() == "results/t.h5");
        CHECK(p.resolved_yaml.find("run_id: " + p.run_id) != std::string::npos);
    }
    // No sweep: the config itself.
    const auto single = expand_sweep(load(mqar_yaml()));
    REQUIRE(single.size() == 1);
    CHECK(single[0].run_id == "t");
    // A sweep given with --set.
    CHECK(expand_sweep(load(mqar_yaml(), {"sweep.train.lr=[0.001, 0.002]"})).size() == 2);
}

TEST_CASE("config: tied sweep keys are zipped") {
    const auto base = load(mqar_yaml("sweep:\n  model.attention+model.n_kv_heads: [[mha, 4], [gqa, 1]]\n  seed: [5]\n"));
    const auto points = expand_sweep(base);
    REQUIRE(points.size() == 2);
    CHECK(points[0].run_id == "attention-mha_n_kv_heads-4_seed-5");
    CHECK(points[1].run_id == "attention-gqa_n_kv_heads-1_seed-5");
    CHECK(points[1].model.plugin_int("n_kv_heads") == 1);
    CHECK(points[1].seed == 5);
    CHECK_THROWS_WITH_AS(load(mqar_yaml("sweep:\n  model.attention+model.n_kv_heads: [[mha, 4], gqa]\n")),
                         doctest::Contains(":17:37: sweep.model.attention+model.n_kv_heads: item 2 must be a list of 2 values"),
                         Error);
}

TEST_CASE("config: every sweep point is validated before any runs; bad points are all named") {
    // n_kv_heads 3 does not divide n_heads 4: found by expand_sweep, not in the middle of a sweep.
    const auto base = load(mqar_yaml("sweep:\n  model.n_kv_heads: [2, 3]\n  seed: [0, 1]\n"));
    CHECK_THROWS_WITH_AS(expand_sweep(base),
                         doctest::Contains(at(cfg_name()) + ":17:3: model.n_kv_heads: n_heads (4) must be divisible by n_kv_heads (3) "
                                                        "(sweep points n_kv_heads-3_seed-0, n_kv_heads-3_seed-1)"),
                         Error);
    // A typo in a swept key is an unknown key at the sweep entry.
    const auto typo = load(mqar_yaml("sweep:\n  model.atention: [mha, mqa]\n"));
    CHECK_THROWS_WITH_AS(expand_sweep(typo), doctest::Contains(":17:3: model.atention: unknown key; did you mean attention?"),
                         Error);
    CHECK_THROWS_WITH_AS(expand_sweep(typo), doctest::Contains("(all 2 sweep points)"), Error);
    // Repeated values would give two runs the same group.
    CHECK_THROWS_WITH_AS(expand_sweep(load(mqar_yaml("sweep:\n  seed: [1, 1]\n"))), doctest::Contains("run id \"seed-1\""), Error);
    CHECK_THROWS_WITH_AS(load(mqar_yaml("sweep:\n  name: [a, b]\n")), doctest::Contains("\"name\" cannot be swept"), Error);
    CHECK_THROWS_WITH_AS(load(mqar_yaml("sweep:\n  seed: 1\n")), doctest::Contains("sweep.seed: expected a non-empty list"),
                         Error);
}
