// SPDX-License-Identifier: GPL-2.0-only
/*
 * Never loaded: this object exists so that the BTF of every ABI type in sealtrail.h is
 * emitted (types used only through pointer casts in the probes are not), and
 * tests/kernel/test_abi.py can compare agent/kernel/abi.py with it (Tetragon's alignchecker).
 *
 * A #define leaves no BTF: enum st_defines carries each one of sealtrail.h (ST_X as
 * ST_DEFINE_X) into it, so the test checks the mirror's constants too. The test fails if a
 * define or an enum of the header is missing here.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "sealtrail.h"

char LICENSE[] SEC("license") = "GPL";

enum st_defines {
	ST_DEFINE_PATH_MAX = ST_PATH_MAX,
	ST_DEFINE_AUID_UNSET = ST_AUID_UNSET,
	ST_DEFINE_PATH_DEPTH = ST_PATH_DEPTH,
	ST_DEFINE_NAME_MAX = ST_NAME_MAX,
	ST_DEFINE_ARGS_MAX = ST_ARGS_MAX,
	ST_DEFINE_COMM_LEN = ST_COMM_LEN,
	ST_DEFINE_FILTER_PREFIX_MAX = ST_FILTER_PREFIX_MAX,
	ST_DEFINE_SCRATCH_SIZE = ST_SCRATCH_SIZE,
	ST_DEFINE_F_TRUNCATED = ST_F_TRUNCATED,
	ST_DEFINE_F_PATH_RESOLVED = ST_F_PATH_RESOLVED,
	ST_DEFINE_F_PATH_RELATIVE = ST_F_PATH_RELATIVE,
	ST_DEFINE_F_NO_EXIT = ST_F_NO_EXIT,
	ST_DEFINE_F_SENDMSG = ST_F_SENDMSG,
	ST_DEFINE_F_TRUNCATE = ST_F_TRUNCATE,
	ST_DEFINE_F_AUTOBIND = ST_F_AUTOBIND,
	ST_DEFINE_EXEC_FILELESS = ST_EXEC_FILELESS,
	ST_DEFINE_RULES_PER_OP = ST_RULES_PER_OP,
	ST_DEFINE_MASK_WORDS = ST_MASK_WORDS,
	ST_DEFINE_LPM_PATH_DATA = ST_LPM_PATH_DATA,
	ST_DEFINE_LPM_ADDR_DATA = ST_LPM_ADDR_DATA,
	ST_DEFINE_LPM_PORT_DATA = ST_LPM_PORT_DATA,
	ST_DEFINE_POL_PATHS_MAX = ST_POL_PATHS_MAX,
	ST_DEFINE_POL_CGROUPS_MAX = ST_POL_CGROUPS_MAX,
	ST_DEFINE_POL_TABLE_MAX = ST_POL_TABLE_MAX,
	ST_DEFINE_LINEAGE_MAX = ST_LINEAGE_MAX,
	ST_DEFINE_RULE_MONITOR = ST_RULE_MONITOR,
	ST_DEFINE_RULE_FALLBACK_KILL = ST_RULE_FALLBACK_KILL,
	ST_DEFINE_RULE_FALLBACK_AUDIT = ST_RULE_FALLBACK_AUDIT,
	ST_DEFINE_GUARD_LINEAGE = ST_GUARD_LINEAGE,
};

struct st_hdr _st_hdr;
struct st_exec _st_exec;
struct st_proc _st_proc;
struct st_file _st_file;
struct st_net _st_net;
struct st_config _st_config;
struct st_rodata _st_rodata;
struct st_prefix_key _st_prefix_key;
struct st_pending _st_pending;
struct st_verdict _st_verdict;
struct st_mask _st_mask;
struct st_pol_masks _st_pol_masks;
struct st_pol_rule _st_pol_rule;
struct st_lpm_path_key _st_lpm_path_key;
struct st_lpm_addr_key _st_lpm_addr_key;
struct st_lpm_port_key _st_lpm_port_key;
struct st_pol_exe _st_pol_exe;
struct st_pol_id_key _st_pol_id_key;
struct st_pol_id _st_pol_id;
struct st_pol_cgroup_key _st_pol_cgroup_key;
struct st_lineage_key _st_lineage_key;
struct st_inode_key _st_inode_key;
struct st_lineage _st_lineage;
struct st_guard_cfg _st_guard_cfg;
struct st_guard_rodata _st_guard_rodata;
enum st_op _st_op;
enum st_variant _st_variant;
enum st_action _st_action;
enum st_mechanism _st_mechanism;
enum st_slot _st_slot;
enum st_pol_action _st_pol_action;
enum st_defines _st_defines;
