/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sealtrail native core: the structs shared with Python (mirrored by ctypes in
 * agent/journal/native.py, sizes checked on load through st_abi_sizes()).
 */
#ifndef STNATIVE_H
#define STNATIVE_H

#include <stdint.h>
#include <stddef.h>

#define ST_MAX_FRONTIER 64

/* An append-only RFC 9162 Merkle tree as its frontier (roots of perfect subtrees). */
struct st_tree {
	uint64_t size;
	uint64_t frontier_len;
	uint8_t frontier[ST_MAX_FRONTIER][32];
};

/* The writer's chain: next seq, hash of the last record, Merkle tree. */
struct st_chain {
	uint64_t next_seq;
	uint8_t prev[32];
	struct st_tree tree;
};

void st_sha256(const uint8_t *data, size_t len, uint8_t out[32]);
/* Record hash: SHA-256("sealtrail/record/v1\0" || line). */
void st_record_hash(const uint8_t *line, size_t len, uint8_t out[32]);
void st_tree_append(struct st_tree *t, const uint8_t record_hash[32]);
void st_tree_root(const struct st_tree *t, uint8_t out[32]);

#endif
