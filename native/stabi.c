// SPDX-License-Identifier: Apache-2.0
/*
 * The layout table: every struct, field and constant of stnative.h as this library was built,
 * so Python can compare its ctypes mirror (agent/native/layout.py) with it: sizes, field
 * offsets and sizes, and the values of the shared constants.
 */
#include "stnative.h"

#define STRUCT(s) {#s, 0, sizeof(struct s), NULL}
#define FIELD(s, f) {#s "." #f, offsetof(struct s, f), sizeof(((struct s *)0)->f), NULL}
#define INT(c) {#c, (int64_t)(c), 0, NULL}
#define TEXT(name, text) {name, 0, sizeof(text) - 1, text}
#define ACTION(a) TEXT("ST_VERDICT_ACTIONS", #a),
#define PROTOCOL(number, name) {"ST_PROTOCOLS", number, sizeof(#name) - 1, #name},

static const struct st_abi_entry ABI[] = {
	STRUCT(st_tree),
	FIELD(st_tree, size),
	FIELD(st_tree, frontier_len),
	FIELD(st_tree, frontier),
	STRUCT(st_chain),
	FIELD(st_chain, next_seq),
	FIELD(st_chain, prev),
	FIELD(st_chain, tree),
	STRUCT(st_verify),
	FIELD(st_verify, chain),
	FIELD(st_verify, taken),
	FIELD(st_verify, limit),
	FIELD(st_verify, last_offset),
	FIELD(st_verify, stop),
	FIELD(st_verify, host),
	FIELD(st_verify, host_len),
	FIELD(st_verify, boot),
	FIELD(st_verify, boot_len),
	STRUCT(st_batch),
	FIELD(st_batch, buf),
	FIELD(st_batch, len),
	FIELD(st_batch, cap),
	FIELD(st_batch, count),
	FIELD(st_batch, failed),
	STRUCT(st_encode),
	FIELD(st_encode, host),
	FIELD(st_encode, host_len),
	FIELD(st_encode, boot),
	FIELD(st_encode, boot_len),
	FIELD(st_encode, clock_offset),
	FIELD(st_encode, fixed_ts),
	FIELD(st_encode, ops_mask),
	FIELD(st_encode, limit),
	FIELD(st_encode, run_end),
	FIELD(st_encode, n_exe),
	FIELD(st_encode, exe_pid),
	FIELD(st_encode, exe_off),
	FIELD(st_encode, exe_len),
	FIELD(st_encode, exe_json),
	FIELD(st_encode, out),
	FIELD(st_encode, out_cap),
	FIELD(st_encode, out_len),
	FIELD(st_encode, taken),
	FIELD(st_encode, stop),
	INT(ST_MAX_FRONTIER),
	INT(ST_SAFE_INT),
	INT(ST_STOP_END),
	INT(ST_STOP_LIMIT),
	INT(ST_STOP_TORN),
	INT(ST_STOP_SYNTAX),
	INT(ST_STOP_RECORD),
	INT(ST_ENC_END),
	INT(ST_ENC_LIMIT),
	INT(ST_ENC_FULL),
	INT(ST_ENC_SLOW),
	{"ST_RECORD_PREFIX", 0, sizeof(ST_RECORD_PREFIX), ST_RECORD_PREFIX}, /* with its NUL */
	ST_VERDICT_ACTIONS(ACTION)
	ST_PROTOCOLS(PROTOCOL)
	{NULL, 0, 0, NULL},
};

const struct st_abi_entry *st_abi(void)
{
	return ABI;
}
