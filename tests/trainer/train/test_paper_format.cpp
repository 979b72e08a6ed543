// The paper's config keys -> kvmtrain's model config (trainer/train/paper_format.h): every
// configs/paper/<size>/<name>.yaml is exactly the model its paper config maps to, key by key;
// the mapping's own choices checked directly; each refusal names its key in one line; and
// kvmtrain -> paper -> kvmtrain gives the model back.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "common/usage_error.h"
#include "trainer/config/config.h"
#include "trainer/train/paper_format.h"

namespace {

namespace fs = std::filesystem;

// The paper's MixerConfigDataclass defaults, every key (its model/rwkv7_backbone.py at 1932b9c).
const char* const kDefaults =
    R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","vocab_size":50304,)"
    R"("num_hidden_layers":12,"num_attention_heads":6,"d_qk_head":null,"d_v_head":null,"d_head":null,)"
    R"("hidden_size":768,"mup_base_dim":768,"rope_theta":10000.0,"rope_partial_dim":64,)"
    R"("alt_rope_theta":10000.0,"alt_rope_partial_dim":64,"alt_share_v0":0,"ffn_expansion":4.0,)"
    R"("token_mixer":"rwkv7","token_mixer_class_path":null,"alt_token_mixer":"swa",)"
    R"("alt_token_mixer_class_path":null,"alt_layer_every":-1,"use_tokenshift_ffn":0,"use_block_lambdas":0,)"
    R"("use_skip_connections":0,"use_l2wrap":0,"logit_softcap":0.0,"residual_scale":null,)"
    R"("use_value_residual":1,"gptalpha_value_residual_mode":"rwkv","gptalpha_token_shift_mode":"rwkv",)"
    R"("kvm_value_residual_mode":"rwkv","kvm_token_shift_mode":"rwkv",)"
    R"("kvm_apply_merge_gate_to_initial_state":0,"kvm_apply_merge_gate_to_appends":1,)"
    R"("kvm_use_merge_gate_keys":1,"kvm_use_merge_gate_values":1,"kvm_use_head_temps":1,"kvm_use_vlens":1,)"
    R"("ovq_value_residual_mode":"rwkv","ovq_token_shift_mode":"rwkv","use_tokenshift_att":0,)"
    R"("swa_value_residual_mode":"rwkv","swa_token_shift_mode":"rwkv","swa_window_size":-1,)"
    R"("ovq_window_size":128,"ovq_chunk_size":128,"ovq_max_centroids":2048,"ovq_normalize_centroids":0,)"
    R"("ovq_use_min_state_size":0,"ovq_use_counts_for_lr_only":0,"ovq_use_delta_rule":0,"kda_expand_k":1.0,)"
    R"("kda_expand_v":1.0,"kda_conv_size":4,"kda_conv_bias":0,"kda_allow_neg_eigval":0,)"
    R"("kda_token_shift_mode":"none","kda_value_residual_mode":"none","gated_deltanet_expand_k":0.75,)"
    R"("gated_deltanet_expand_v":1.5,"gated_deltanet_num_kv_heads":null,"gated_deltanet_conv_size":4,)"
    R"("gated_deltanet_conv_bias":0,"gated_deltanet_use_mamba_gate":1,)"
    R"("gated_deltanet_token_shift_mode":"none","gated_deltanet_value_residual_mode":"none","sink_len":1,)"
    R"("chunk_len":256,"n_max_d_chunks":1,"n_bswa_chunks":2,"state_budget_mode":"fixed",)"
    R"("state_growth_factor":1.0,"state_growth_exponent":0.5,"state_round_down":1,"state_min_len":-1,)"
    R"("state_saturation_n":null,"use_overflow_v_key_weighting":1,"use_state_deltarule":0,)"
    R"("use_state_decay":0,"lact_value_residual_mode":"rwkv","lact_token_shift_mode":"rwkv",)"
    R"("lact_actual_rope_partial_dim":-1,"lact_lact_window_size":-1,"lact_chunk_size":-1,)"
    R"("lact_num_fw_heads":-1,"lact_inter_multi":1.0,"lact_norm_eps":1e-06,"lact_attn_qk_norm":0,)"
    R"("lact_w0_w2_low_rank":32,"lact_fw_init_gain":0.5,"lact_ttt_lag":0,"lact_factor":1.0,)"
    R"("lact_use_muon":0,"lact_learnable_muon_lr":0,"lact_muon_lr_reduce_exp":2,"lact_use_momentum":1,)"
    R"("lact_ttt_prenorm":0,"lact_ttt_nope":0,"lact_no_v_silu":0,"lact_use_bswa":0,)"
    R"("param_dtype":"bfloat16"})";

// The model section of each paper config kvmtrain can express (configs/prolong/{120M,350M}, all
// but ovq_* and rwkv_*), transcribed; their base.yaml adds mup_base_dim 768.
struct PaperConfig {
  const char* size;
  const char* name;
  const char* model;
};
const PaperConfig kConfigs[] = {
    {"120M", "ablation_kvm_no_head_temps",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":1,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"fixed","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0,"kvm_use_head_temps":0})"},
    {"120M", "ablation_kvm_no_merge_gate",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":1,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"fixed","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0,"kvm_use_merge_gate_keys":0,)"
     R"("kvm_use_merge_gate_values":0})"},
    {"120M", "ablation_kvm_no_sink",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":0,"chunk_len":256,"n_max_d_chunks":1,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"fixed","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0})"},
    {"120M", "ablation_kvm_no_vlens",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":1,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"fixed","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0,"kvm_use_vlens":0})"},
    {"120M", "gptalpha_bswa_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM",)"
     R"("token_mixer":"gptalpha_bswa","vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,)"
     R"("hidden_size":768,"ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,)"
     R"("logit_softcap":0,"use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,)"
     R"("rope_partial_dim":64,"chunk_len":256,"n_bswa_chunks":3,"residual_scale":1.0,"sink_len":0})"},
    {"120M", "gptalpha_halfrope_swa_rope_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"gptalpha",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_partial_dim":64,)"
     R"("alt_layer_every":2,"alt_rope_partial_dim":128,"swa_window_size":256,"residual_scale":1.0})"},
    {"120M", "gptalpha_nope_swa_rope_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"gptalpha",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_partial_dim":0,)"
     R"("alt_layer_every":2,"alt_rope_partial_dim":128,"swa_window_size":256,"residual_scale":1.0})"},
    {"120M", "gptalpha_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"gptalpha",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_partial_dim":64,)"
     R"("residual_scale":1.0})"},
    {"120M", "kvm_no_append_gate_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":1,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"fixed","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0,)"
     R"("kvm_apply_merge_gate_to_appends":0})"},
    {"120M", "kvm_sqrt16_no_append_gate_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":10000,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"power_law","state_growth_factor":16.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0,)"
     R"("kvm_apply_merge_gate_to_appends":0})"},
    {"120M", "kvm_sqrt16_no_merge_gate_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":10000,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"power_law","state_growth_factor":16.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0,"kvm_use_merge_gate_keys":0,)"
     R"("kvm_use_merge_gate_values":0})"},
    {"120M", "kvm_sqrt16_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":10000,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"power_law","state_growth_factor":16.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0})"},
    {"120M", "kvm_swa_saturate1024_no_append_gate_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_value_residual":1,"use_skip_connections":0,"use_block_lambdas":0,)"
     R"("logit_softcap":0,"use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,)"
     R"("rope_theta":10000,"rope_partial_dim":64,"alt_layer_every":2,"alt_rope_partial_dim":128,)"
     R"("sink_len":1,"chunk_len":256,"n_max_d_chunks":10000,"n_bswa_chunks":2,"swa_window_size":256,)"
     R"("state_budget_mode":"kvm_saturation","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":1,"state_saturation_n":1024,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0,)"
     R"("kvm_apply_merge_gate_to_appends":0})"},
    {"120M", "kvm_swa_saturate1024_no_merge_gate_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_value_residual":1,"use_skip_connections":0,"use_block_lambdas":0,)"
     R"("logit_softcap":0,"use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,)"
     R"("rope_theta":10000,"rope_partial_dim":64,"alt_layer_every":2,"alt_rope_partial_dim":128,)"
     R"("sink_len":1,"chunk_len":256,"n_max_d_chunks":10000,"n_bswa_chunks":2,"swa_window_size":256,)"
     R"("state_budget_mode":"kvm_saturation","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":1,"state_saturation_n":1024,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0,"kvm_use_merge_gate_keys":0,)"
     R"("kvm_use_merge_gate_values":0})"},
    {"120M", "kvm_swa_saturate1024_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_value_residual":1,"use_skip_connections":0,"use_block_lambdas":0,)"
     R"("logit_softcap":0,"use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,)"
     R"("rope_theta":10000,"rope_partial_dim":64,"alt_layer_every":2,"alt_rope_partial_dim":128,)"
     R"("sink_len":1,"chunk_len":256,"n_max_d_chunks":10000,"n_bswa_chunks":2,"swa_window_size":256,)"
     R"("state_budget_mode":"kvm_saturation","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":1,"state_saturation_n":1024,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0})"},
    {"120M", "kvm_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":12,"num_attention_heads":6,"hidden_size":768,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":1,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"fixed","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":1.0,"kvm_apply_merge_gate_to_initial_state":0})"},
    {"350M", "gptalpha_bswa_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM",)"
     R"("token_mixer":"gptalpha_bswa","vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,)"
     R"("hidden_size":1024,"ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,)"
     R"("logit_softcap":0,"use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,)"
     R"("rope_partial_dim":64,"chunk_len":256,"n_bswa_chunks":3,"residual_scale":0.5,"sink_len":0})"},
    {"350M", "gptalpha_halfrope_swa_rope_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"gptalpha",)"
     R"("vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,"hidden_size":1024,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_partial_dim":64,)"
     R"("alt_layer_every":2,"alt_rope_partial_dim":128,"swa_window_size":256,"residual_scale":0.5})"},
    {"350M", "gptalpha_nope_swa_rope_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"gptalpha",)"
     R"("vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,"hidden_size":1024,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_partial_dim":0,)"
     R"("alt_layer_every":2,"alt_rope_partial_dim":128,"swa_window_size":256,"residual_scale":0.5})"},
    {"350M", "gptalpha_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"gptalpha",)"
     R"("vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,"hidden_size":1024,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_partial_dim":64,)"
     R"("residual_scale":0.5})"},
    {"350M", "kvm_no_append_gate_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,"hidden_size":1024,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":1,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"fixed","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":0.5,"kvm_apply_merge_gate_to_initial_state":0,)"
     R"("kvm_apply_merge_gate_to_appends":0})"},
    {"350M", "kvm_no_merge_gate_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,"hidden_size":1024,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":1,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"fixed","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":0.5,"kvm_apply_merge_gate_to_initial_state":0,"kvm_use_merge_gate_keys":0,)"
     R"("kvm_use_merge_gate_values":0})"},
    {"350M", "kvm_sqrt16_no_append_gate_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,"hidden_size":1024,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":10000,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"power_law","state_growth_factor":16.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":0.5,"kvm_apply_merge_gate_to_initial_state":0,)"
     R"("kvm_apply_merge_gate_to_appends":0})"},
    {"350M", "kvm_sqrt16_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,"hidden_size":1024,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":10000,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"power_law","state_growth_factor":16.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":0.5,"kvm_apply_merge_gate_to_initial_state":0})"},
    {"350M", "kvm_swa_saturate1024_no_append_gate_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,"hidden_size":1024,)"
     R"("ffn_expansion":4,"use_value_residual":1,"use_skip_connections":0,"use_block_lambdas":0,)"
     R"("logit_softcap":0,"use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,)"
     R"("rope_theta":10000,"rope_partial_dim":64,"alt_layer_every":2,"alt_rope_partial_dim":128,)"
     R"("sink_len":1,"chunk_len":256,"n_max_d_chunks":10000,"n_bswa_chunks":2,"swa_window_size":256,)"
     R"("state_budget_mode":"kvm_saturation","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":1,"state_saturation_n":1024,"param_dtype":"bfloat16",)"
     R"("residual_scale":0.5,"kvm_apply_merge_gate_to_initial_state":0,)"
     R"("kvm_apply_merge_gate_to_appends":0})"},
    {"350M", "kvm_swa_saturate1024_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,"hidden_size":1024,)"
     R"("ffn_expansion":4,"use_value_residual":1,"use_skip_connections":0,"use_block_lambdas":0,)"
     R"("logit_softcap":0,"use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,)"
     R"("rope_theta":10000,"rope_partial_dim":64,"alt_layer_every":2,"alt_rope_partial_dim":128,)"
     R"("sink_len":1,"chunk_len":256,"n_max_d_chunks":10000,"n_bswa_chunks":2,"swa_window_size":256,)"
     R"("state_budget_mode":"kvm_saturation","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":1,"state_saturation_n":1024,"param_dtype":"bfloat16",)"
     R"("residual_scale":0.5,"kvm_apply_merge_gate_to_initial_state":0})"},
    {"350M", "kvm_wd",
     R"({"model_class_path":"model.rwkv7_backbone.RWKV7BackboneForCausalLM","token_mixer":"kvm",)"
     R"("vocab_size":50304,"num_hidden_layers":24,"num_attention_heads":8,"hidden_size":1024,)"
     R"("ffn_expansion":4,"use_skip_connections":0,"use_block_lambdas":0,"logit_softcap":0,)"
     R"("use_l2wrap":0,"use_tokenshift_att":1,"use_tokenshift_ffn":1,"rope_theta":10000,)"
     R"("rope_partial_dim":64,"sink_len":1,"chunk_len":256,"n_max_d_chunks":1,"n_bswa_chunks":2,)"
     R"("state_budget_mode":"fixed","state_growth_factor":1.0,"state_growth_exponent":0.5,)"
     R"("state_round_down":1,"state_min_len":256,"state_saturation_n":null,"param_dtype":"bfloat16",)"
     R"("residual_scale":0.5,"kvm_apply_merge_gate_to_initial_state":0})"},
};

json::Object object(const std::string& text) { return json::parse(text).object(); }

// The defaults, then the base's and the file's keys.
json::Object paper_keys(const PaperConfig& p) {
  json::Object o = object(kDefaults);
  o["mup_base_dim"] = 768;
  for (const auto& [k, v] : object(p.model)) o[k] = v;
  return o;
}

// "model.kvm.chunk" -> its value as JSON text, for every key of a model config.
void flatten(const std::string& prefix, const json::Value& v, std::map<std::string, std::string>& out) {
  if (!v.is_object()) {
    out[prefix] = json::dump(v);
    return;
  }
  for (const auto& [k, x] : v.object()) flatten(prefix + "." + k, x, out);
}
std::map<std::string, std::string> keys_of(const config::ModelConfig& m) {
  config::Config c;
  c.model = m;
  std::map<std::string, std::string> out;
  flatten("model", config::to_json(c).at("model"), out);
  return out;
}

config::ModelConfig map(const json::Object& o) { return paper::to_model(o, "config.json"); }

TEST(PaperFormat, TheMappingsDefaultsAreTheDataclasss) {
  const json::Object test = object(kDefaults);
  ASSERT_EQ(paper::dataclass_defaults().size(), test.size());
  for (const auto& [key, value] : paper::dataclass_defaults()) {
    ASSERT_TRUE(test.count(key)) << key;
    EXPECT_EQ(json::dump(value), json::dump(test.at(key))) << key;
  }
}

TEST(PaperFormat, EveryPaperConfigIsItsYamlKeyByKey) {
  ASSERT_EQ(std::size(kConfigs), 27u);
  for (const auto& p : kConfigs) {
    const std::string yaml = std::string(KVMTRAIN_SOURCE_DIR) + "/configs/paper/" + p.size + "/" + p.name + ".yaml";
    SCOPED_TRACE(yaml);
    ASSERT_TRUE(fs::exists(yaml));
    const auto expected = keys_of(map(paper_keys(p)));
    const auto loaded = keys_of(config::load(yaml).model);
    ASSERT_EQ(loaded.size(), expected.size());
    for (const auto& [key, value] : expected) EXPECT_EQ(loaded.at(key), value) << key;
  }
}

// The mapping's choices, checked on their own rather than against the YAML files.
TEST(PaperFormat, MapsTheKeysAsDocumented) {
  auto find = [](const std::string& size, const std::string& name) {
    for (const auto& p : kConfigs)
      if (p.size == size && p.name == name) return map(paper_keys(p));
    throw std::runtime_error("no config " + name);
  };
  using config::Mixer;
  const auto kvm = find("120M", "kvm_wd");
  EXPECT_EQ(kvm.mixers, std::vector<Mixer>{Mixer::kvm});
  EXPECT_EQ(kvm.vocab_size, 50257);
  EXPECT_EQ(kvm.padded_vocab_size, 50304);
  EXPECT_TRUE(kvm.softmax_over_padding);
  EXPECT_EQ(kvm.n_layer, 12);
  EXPECT_EQ(kvm.n_head, 6);
  EXPECT_EQ(kvm.d_model, 768);
  EXPECT_EQ(kvm.pos, config::Pos::rope);
  EXPECT_EQ(kvm.rope_dims, 64);
  EXPECT_EQ(kvm.rope_variant, config::RopeVariant::paper);
  EXPECT_EQ(kvm.init, config::ModelInit::paper);
  EXPECT_TRUE(kvm.qkv_shift && kvm.mlp_shift && kvm.value_residual && kvm.qk_norm && kvm.emb_norm);
  EXPECT_FALSE(kvm.bias || kvm.tie_embeddings || kvm.token_shift);
  EXPECT_EQ(kvm.value_residual_mode, config::ValueResidualMode::rwkv);
  EXPECT_EQ(kvm.value_residual_anchor, config::ValueResidualAnchor::per_mixer);
  EXPECT_EQ(kvm.kvm.max_slots, 256);
  EXPECT_EQ(kvm.kvm.min_len, 256);
  EXPECT_EQ(kvm.kvm.budget, config::KvmBudget::fixed);
  EXPECT_EQ(kvm.swa_window, 256) << "swa_window_size -1: chunk_len";
  EXPECT_EQ(find("350M", "kvm_wd").residual_scale, 0.5);

  const auto sqrt16 = find("120M", "kvm_sqrt16_wd");
  EXPECT_EQ(sqrt16.kvm.budget, config::KvmBudget::power_law);
  EXPECT_EQ(sqrt16.kvm.power_f, 16);
  EXPECT_EQ(sqrt16.kvm.max_slots, 256 * 10000);

  const auto hybrid = find("120M", "kvm_swa_saturate1024_no_append_gate_wd");
  EXPECT_EQ(hybrid.mixers, (std::vector<Mixer>{Mixer::swa, Mixer::kvm}));
  EXPECT_EQ(hybrid.swa_rope_dims, 128);
  EXPECT_EQ(hybrid.swa_rope_base, 10000);
  EXPECT_EQ(hybrid.swa_window, 256);
  EXPECT_EQ(hybrid.kvm.budget, config::KvmBudget::saturating);
  EXPECT_EQ(hybrid.kvm.sat_n, 1024);
  EXPECT_EQ(hybrid.kvm.min_len, 1);
  EXPECT_FALSE(hybrid.kvm.gate_appends);

  const auto nope = find("350M", "gptalpha_nope_swa_rope_wd");
  EXPECT_EQ(nope.pos, config::Pos::none);
  EXPECT_EQ(nope.mixers, (std::vector<Mixer>{Mixer::swa, Mixer::attn}));
  EXPECT_EQ(nope.swa_rope_dims, 128);

  const auto bswa = find("120M", "gptalpha_bswa_wd");
  EXPECT_EQ(bswa.mixers, std::vector<Mixer>{Mixer::bswa});
  EXPECT_EQ(bswa.kvm.window_chunks, 3);
  EXPECT_EQ(bswa.kvm.sink, 0);

  // the defaults read as kvmtrain's: state_min_len -1 is no floor, residual_scale null is 1
  json::Object o = object(kDefaults);
  o["token_mixer"] = "gptalpha";
  const auto plain = map(o);
  EXPECT_EQ(plain.kvm.min_len, 0);
  EXPECT_EQ(plain.residual_scale, 1.0);
  EXPECT_FALSE(plain.qkv_shift) << "use_tokenshift_att 0";
  EXPECT_FALSE(plain.mlp_shift);
  o["alt_share_v0"] = 1;
  o["gptalpha_value_residual_mode"] = "linear";
  o["use_tokenshift_att"] = 1;
  o["gptalpha_token_shift_mode"] = "none";
  o["alt_layer_every"] = 3;
  o["alt_token_mixer"] = "kvm";
  o["alt_rope_partial_dim"] = 64;
  o["kvm_value_residual_mode"] = "linear";
  o["kvm_token_shift_mode"] = "none";
  o["ovq_window_size"] = 7;  // a mixer the model does not have: ignored
  const auto alt = map(o);
  EXPECT_EQ(alt.value_residual_anchor, config::ValueResidualAnchor::layer0);
  EXPECT_EQ(alt.value_residual_mode, config::ValueResidualMode::linear);
  EXPECT_FALSE(alt.qkv_shift) << "token shift mode none";
  EXPECT_EQ(alt.mixers, (std::vector<Mixer>{Mixer::kvm, Mixer::attn, Mixer::attn}));
}

TEST(PaperFormat, EachRefusalNamesItsKeyInOneLine) {
  struct Refusal {
    const char* key;
    const char* set;  // JSON object of keys set on top of a 2-layer kvm config
  };
  const Refusal cases[] = {
      {"token_mixer", R"({"token_mixer": "rwkv7"})"},
      {"token_mixer", R"({"token_mixer": "ovq"})"},
      {"alt_token_mixer", R"({"alt_layer_every": 2, "alt_token_mixer": "ovq"})"},
      {"token_mixer_class_path", R"({"token_mixer_class_path": "model.kvm_mixer.SequenceMixer"})"},
      {"alt_token_mixer_class_path", R"({"alt_token_mixer_class_path": "model.swa_mixer.SequenceMixer"})"},
      {"model_class_path", R"({"model_class_path": "model.other.Model"})"},
      {"use_block_lambdas", R"({"use_block_lambdas": 1})"},
      {"use_skip_connections", R"({"use_skip_connections": 1})"},
      {"use_l2wrap", R"({"use_l2wrap": 1})"},
      {"logit_softcap", R"({"logit_softcap": 30})"},
      {"state_round_down", R"({"state_round_down": 64})"},
      {"use_state_deltarule", R"({"use_state_deltarule": 1})"},
      {"use_state_decay", R"({"use_state_decay": 1})"},
      {"use_overflow_v_key_weighting", R"({"use_overflow_v_key_weighting": 0})"},
      {"d_qk_head", R"({"d_qk_head": 32})"},
      {"d_v_head", R"({"d_v_head": 32})"},
      {"d_head", R"({"d_head": 32})"},
      {"ffn_expansion", R"({"ffn_expansion": 3})"},
      {"kvm_value_residual_mode", R"({"kvm_value_residual_mode": "rwkv_post_tokenshift"})"},
      {"kvm_value_residual_mode", R"({"alt_layer_every": 2, "swa_value_residual_mode": "linear"})"},
      {"kvm_token_shift_mode", R"({"alt_layer_every": 2, "kvm_token_shift_mode": "none"})"},
      {"sink_len", R"({"token_mixer": "gptalpha_bswa", "sink_len": 1})"},
      {"state_saturation_n", R"({"state_budget_mode": "kvm_saturation"})"},
      {"state_budget_mode", R"({"state_budget_mode": "exponential"})"},
      {"alt_rope_partial_dim", R"({"alt_layer_every": 2, "alt_token_mixer": "gptalpha", "token_mixer": "gptalpha",
                                   "alt_rope_partial_dim": 32})"},
      {"tie_word_embeddings", R"({"tie_word_embeddings": true})"},
      {"not_a_paper_key", R"({"not_a_paper_key": 1})"},
  };
  for (const auto& c : cases) {
    json::Object o = object(kDefaults);
    for (const auto& [k, v] : object(R"({"token_mixer": "kvm", "num_hidden_layers": 2, "num_attention_heads": 2,
                                         "hidden_size": 128, "alt_rope_partial_dim": 64, "use_tokenshift_att": 1})"))
      o[k] = v;
    for (const auto& [k, v] : object(c.set)) o[k] = v;
    SCOPED_TRACE(c.set);
    try {
      map(o);
      ADD_FAILURE() << "accepted";
    } catch (const UsageError& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind(std::string("config.json: ") + c.key, 0), 0u) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
}

// kvmtrain -> paper keys -> kvmtrain: the same model, and the keys are the dataclass's plus
// PretrainedConfig's basics.
TEST(PaperFormat, ExportedKeysMapBackToTheSameModel) {
  for (const auto& p : kConfigs) {
    SCOPED_TRACE(std::string(p.size) + "/" + p.name);
    const config::ModelConfig m = map(paper_keys(p));
    const json::Object out = paper::from_model(m, config::Tokenizer::gpt2);
    EXPECT_EQ(out.size(), object(kDefaults).size() + 7);
    for (const auto& [key, value] : object(kDefaults)) EXPECT_TRUE(out.count(key)) << key;
    EXPECT_EQ(out.at("model_type").string(), "rwkv7backbone");
    EXPECT_EQ(keys_of(map(out)), keys_of(m));
  }
}

TEST(PaperFormat, ExportRefusesWhatThePaperCannotExpress) {
  config::ModelConfig paper_model = map(paper_keys(kConfigs[0]));
  struct Case {
    const char* key;
    std::function<void(config::ModelConfig&)> set;
  };
  const Case cases[] = {
      {"model.tie_embeddings", [](auto& m) { m.tie_embeddings = true; }},
      {"model.pos", [](auto& m) { m.pos = config::Pos::learned; }},
      {"model.mlp", [](auto& m) { m.mlp = config::Mlp::gelu; }},
      {"model.bias", [](auto& m) { m.bias = true; }},
      {"model.qk_norm", [](auto& m) { m.qk_norm = false; }},
      {"model.emb_norm", [](auto& m) { m.emb_norm = false; }},
      {"model.rope_variant", [](auto& m) { m.rope_variant = config::RopeVariant::kvmtrain; }},
      {"model.value_residual_mode", [](auto& m) { m.value_residual_mode = config::ValueResidualMode::average; }},
      {"model.mixers", [](auto& m) { m.mixers = {config::Mixer::attn, config::Mixer::kvm, config::Mixer::swa}; }},
      {"model.kvm.max_slots", [](auto& m) { m.kvm.max_slots = 0; }},
  };
  for (const auto& c : cases) {
    config::ModelConfig m = paper_model;
    c.set(m);
    try {
      paper::from_model(m, config::Tokenizer::gpt2);
      ADD_FAILURE() << c.key << " accepted";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(c.key) + ":"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(paper::from_model(paper_model, config::Tokenizer::byte), UsageError);
}

}  // namespace
