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

/* The verifier's fast path (stjournal.c): runs of ordinary records that continue ``chain``. */
struct st_verify {
	struct st_chain *chain; /* in/out: the seq, prev and tree the records must continue */
	uint64_t taken;        /* out: records taken by the last run */
	uint64_t limit;        /* in: take at most this many records */
	uint64_t last_offset;  /* out: offset in buf of the last record taken */
	uint64_t stop;         /* out: why the run stopped (ST_STOP_*), for tests */
	const char *host;      /* in: canonical JSON content of the journal's host */
	uint64_t host_len;
	const char *boot; /* in: canonical JSON content of the current boot id */
	uint64_t boot_len;
};
uint64_t st_verify_run(struct st_verify *st, const uint8_t *buf, uint64_t len, uint64_t pos);

void st_sha256(const uint8_t *data, size_t len, uint8_t out[32]);
/* Record hash: SHA-256("sealtrail/record/v1\0" || line). */
void st_record_hash(const uint8_t *line, size_t len, uint8_t out[32]);
void st_tree_append(struct st_tree *t, const uint8_t record_hash[32]);
void st_tree_root(const struct st_tree *t, uint8_t out[32]);
/* Chain one record line (no newline): hash, tree leaf, prev, seq. */
void st_chain_add(struct st_chain *c, const uint8_t *line, uint64_t len);
/* A 32-byte hash as 64 lower-case hex digits (no NUL). */
void st_hex32(char out[64], const uint8_t in[32]);

#endif
